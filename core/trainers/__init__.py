"""Trainers: DFT (bottom-up), EXP (DiffTRe, top-down) and their combinations."""


def run_spec(spec, spec_dir, out_dir, progress, resume: bool = False) -> dict:
    """Run the trainer the spec names; returns a JSON-able summary."""
    if spec.trainer.kind == "exp":
        from .exp import ExpTrainer

        trainer = ExpTrainer(spec, spec_dir, out_dir, progress)
        trainer.run(resume=resume)
        return {"trainer": "exp", "updates": trainer.update_index, "final_estimates": trainer.final_estimates()}
    if spec.trainer.kind == "dft":
        from .fused import run_dft

        return run_dft(spec, spec_dir, out_dir, progress, resume=resume)[1]
    if spec.trainer.kind in ("sequential", "fused"):
        from .fused import run_sequential_or_fused

        return run_sequential_or_fused(spec, spec_dir, out_dir, progress, resume)
    raise ValueError(f"unknown trainer kind {spec.trainer.kind!r}")
