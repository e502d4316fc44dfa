"""Generate titanium configurations with ASE and label them with CHGNet (a stand-in for DFT).

The paper's 5704-configuration PBE set cannot be shipped, so the titanium example trains on the
labels of CHGNet, a universal potential trained on PBE(+U) Materials Project relaxations.  These
labels are NOT DFT: they are one model's predictions, with its errors, for structures like those
of the paper's set.

What is generated (phases hcp, bcc, fcc, ω; 32–128 atoms, sizes drawn per configuration):
- strained: random symmetric strain, every component uniform in ±5 % (30 % of them isotropic),
  plus a 0.02 Å Gaussian rattle so that forces are not zero by symmetry;
- perturbed: Gaussian displacements with σ uniform in [0.02, 0.20] Å;
- vacancy: one or two atoms removed (unrelaxed), 0.05 Å rattle;
- thermal: *not* MD — temperature-scaled Gaussian displacements of the perfect lattice, the
  Einstein-model amplitude ⟨u_x²⟩ = k_B T / (m ω_E²) with ν_E = 5.5 THz (≈ the mean phonon
  frequency of hcp Ti, 5.6 THz in the Stassis 1979 DOS; the harmonic ⟨1/ω²⟩ of that DOS would
  give 4.7 THz, i.e. ~17 % larger amplitudes), on a lattice expanded by 1e-5 /K above 300 K;
- liquid: CHGNet Langevin MD (ASE; 2 fs steps, friction 0.05/fs) of 54 atoms at the liquid
  density (19.4 Å³/atom): melted at 3000 K (100 steps) from a perturbed bcc lattice, then cooled
  through 2500, 2200 and 1900 K (105 steps each, the last 75 sampled every 3 steps = 6 fs; such
  close snapshots are strongly correlated).

Labels: energy (eV), forces (eV/Å) and the virial W = −V·σ (eV) from CHGNet's stress σ, which the
ASE calculator returns as σ = (1/V) ∂E/∂ε in eV/Å³ (positive = tensile; checked against a finite
difference of the energy).  Written as DeePMD npy systems `<phase>/<kind>/n<N>/` (read by
`fusepot.core.datasets.read_dataset`) with a `manifest.json` of counts, versions, seed, timings.

Usage (CPU, a few minutes to half an hour):
    nice -n 10 python examples/titanium/scripts/label_chgnet.py [--out DIR] [--seed 2024] [--quick]
Needs the `label` extra: pip install chgnet (with a CPU torch).
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import bulk

K_B = 8.617333262e-5  # eV/K
TI_MASS = 47.867  # amu
NU_EINSTEIN_THZ = 5.5
V_LIQUID = 19.4  # Å³/atom: liquid Ti at ~1950 K (4.1 g/cm³)

# Lattice parameters near CHGNet/PBE equilibrium (Å); strains are applied around these.
A_HCP, C_HCP = 2.935, 4.645
A_BCC = 3.255
A_FCC = 4.115
A_OMEGA, C_OMEGA = 4.575, 2.835

# per phase: (supercell builder, number of configurations per kind)
COUNTS = {
    "hcp": {"strained": 90, "perturbed": 60, "vacancy": 40, "thermal": 90},
    "bcc": {"strained": 60, "perturbed": 40, "vacancy": 30, "thermal": 70},
    "fcc": {"strained": 40, "perturbed": 30, "vacancy": 20, "thermal": 40},
    "omega": {"strained": 40, "perturbed": 30, "vacancy": 20, "thermal": 40},
}
THERMAL_T = {"hcp": (300, 1100), "bcc": (1000, 1900), "fcc": (300, 1300), "omega": (300, 900)}
# liquid MD: (T in K, steps of 2 fs, snapshots kept from the end of the stage, one every 3 steps)
LIQUID_SCHEDULE = ((3000, 100, 20), (2500, 30 + 75, 25), (2200, 30 + 75, 25), (1900, 30 + 75, 25))
LIQUID_STRIDE = 3


def omega_cell() -> Atoms:
    """ω-Ti (P6/mmm, 3 atoms): Ti on 1a (0,0,0) and 2d (1/3,2/3,1/2), (2/3,1/3,1/2)."""
    a, c = A_OMEGA, C_OMEGA
    cell = [[a, 0, 0], [-a / 2, a * np.sqrt(3) / 2, 0], [0, 0, c]]
    return Atoms("Ti3", cell=cell, pbc=True,
                 scaled_positions=[[0, 0, 0], [1 / 3, 2 / 3, 0.5], [2 / 3, 1 / 3, 0.5]])


def supercells(phase: str) -> list[Atoms]:
    """Perfect supercells of 32–128 atoms for one phase."""
    if phase == "hcp":
        p = bulk("Ti", "hcp", a=A_HCP, c=C_HCP)
        return [p.repeat(r) for r in [(3, 3, 2), (4, 4, 2), (4, 4, 3), (4, 4, 4)]]  # 36, 64, 96, 128
    if phase == "bcc":
        c, p = bulk("Ti", "bcc", a=A_BCC, cubic=True), bulk("Ti", "bcc", a=A_BCC)
        return [c.repeat((3, 3, 3)), p.repeat((4, 4, 4)), c.repeat((4, 3, 3)), c.repeat((4, 4, 4))]  # 54, 64, 72, 128
    if phase == "fcc":
        c, p = bulk("Ti", "fcc", a=A_FCC, cubic=True), bulk("Ti", "fcc", a=A_FCC)
        return [c.repeat((2, 2, 2)), c.repeat((3, 2, 2)), p.repeat((4, 4, 4)), c.repeat((3, 3, 3))]  # 32, 48, 64, 108
    if phase == "omega":
        w = omega_cell()
        return [w.repeat(r) for r in [(2, 2, 4), (3, 3, 2), (2, 2, 6), (3, 3, 4)]]  # 48, 54, 72, 108
    raise ValueError(phase)


def strained(at: Atoms, eps: np.ndarray) -> Atoms:
    out = at.copy()
    out.set_cell(at.cell.array @ (np.eye(3) + eps), scale_atoms=True)  # rows = lattice vectors
    return out


def rattled(at: Atoms, sigma: float, rng: np.random.Generator) -> Atoms:
    out = at.copy()
    out.positions = out.positions + rng.normal(0.0, sigma, out.positions.shape)
    return out


def einstein_sigma(T: float) -> float:
    """RMS displacement per Cartesian component (Å): sqrt(k_B T / (m ω_E²))."""
    omega = 2 * np.pi * NU_EINSTEIN_THZ * 1e12  # 1/s
    k_si = TI_MASS * 1.66053906660e-27 * omega ** 2  # N/m = J/m²
    k_ev_a2 = k_si / 1.602176634e-19 * 1e-20  # eV/Å²
    return float(np.sqrt(K_B * T / k_ev_a2))


def make_static(rng: np.random.Generator, counts: dict) -> list[tuple[str, str, Atoms, dict]]:
    """(phase, kind, atoms, info) for every static configuration."""
    out = []
    for phase, kinds in counts.items():
        cells = supercells(phase)
        for kind, n in kinds.items():
            for _ in range(n):
                base = cells[rng.integers(len(cells))]
                info = {}
                if kind == "strained":
                    if rng.random() < 0.3:
                        eps = np.eye(3) * rng.uniform(-0.05, 0.05)
                    else:
                        e = rng.uniform(-0.05, 0.05, (3, 3))
                        eps = np.triu(e) + np.triu(e, 1).T  # symmetric, each component in ±5 %
                    at = rattled(strained(base, eps), 0.02, rng)
                elif kind == "perturbed":
                    sig = rng.uniform(0.02, 0.20)
                    at, info = rattled(base, sig, rng), {"sigma_A": sig}
                elif kind == "vacancy":
                    nv = int(rng.integers(1, 3))
                    at = base.copy()
                    del at[sorted(rng.choice(len(at), nv, replace=False).tolist(), reverse=True)]
                    at, info = rattled(at, 0.05, rng), {"n_vacancies": nv}
                elif kind == "thermal":
                    lo, hi = THERMAL_T[phase]
                    T = float(rng.uniform(lo, hi))
                    at = strained(base, np.eye(3) * 1e-5 * max(T - 300.0, 0.0))
                    at, info = rattled(at, einstein_sigma(T), rng), {"T_K": T}
                else:
                    raise ValueError(kind)
                out.append((phase, kind, at, info))
    return out


def labels(at: Atoms) -> tuple[float, np.ndarray, np.ndarray]:
    """(energy eV, forces eV/Å, virial eV) from the attached CHGNet calculator."""
    e = float(at.get_potential_energy())
    f = np.asarray(at.get_forces(), np.float64)
    sigma = np.asarray(at.get_stress(voigt=False), np.float64)  # ASE: (1/V) ∂E/∂ε, eV/Å³
    return e, f, -at.get_volume() * sigma  # W = −∂E/∂ε = −V σ


_CALC = None  # one CHGNet calculator per worker process


def _init_worker(threads: int, seed: int) -> None:
    """Load CHGNet in a worker (torch is imported only in workers, never before the fork)."""
    global _CALC
    import torch
    from chgnet.model import CHGNet
    from chgnet.model.dynamics import CHGNetCalculator

    torch.set_num_threads(threads)  # 1 thread per worker: OpenMP threads thrash on a busy machine
    torch.manual_seed(seed)
    model = CHGNet.load(model_name="0.3.0", verbose=False)  # weights ship inside the package
    _CALC = CHGNetCalculator(model=model, use_device="cpu", on_isolated_atoms="error")


def _label_static(at: Atoms) -> tuple[float, np.ndarray, np.ndarray]:
    at = at.copy()
    at.calc = _CALC
    return labels(at)


def run_liquid(seed: int, schedule) -> tuple[list, float]:
    """CHGNet Langevin MD of 54 atoms: melt, then cool.

    Returns the labelled snapshots [(phase, kind, atoms, info, (e, f, w))] and the wall time (s).
    """
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    rng = np.random.default_rng(seed + 1000)
    at = bulk("Ti", "bcc", a=A_BCC, cubic=True).repeat((3, 3, 3))
    at.set_cell(at.cell.array * (V_LIQUID * len(at) / at.get_volume()) ** (1 / 3), scale_atoms=True)
    at = rattled(at, 0.25, rng)
    at.calc = _CALC
    MaxwellBoltzmannDistribution(at, temperature_K=schedule[0][0], rng=np.random.RandomState(seed))
    out = []
    t0 = time.time()
    for k, (T, steps, kept) in enumerate(schedule):
        dyn = Langevin(at, 2.0 * units.fs, temperature_K=T, friction=0.05 / units.fs,
                       rng=np.random.RandomState(seed + 1 + k))
        first = steps - LIQUID_STRIDE * kept
        for step in range(1, steps + 1):
            dyn.run(1)
            if step > first and (step - first) % LIQUID_STRIDE == 0:
                snap = at.copy()
                snap.calc = None
                out.append(("liquid", "md", snap, {"T_K": T, "step": step}, labels(at)))
        print(f"  liquid {T} K: {steps} steps, T_inst = {at.get_temperature():.0f} K "
              f"({time.time() - t0:.0f} s)", flush=True)
    return out, time.time() - t0


def write_deepmd(root: Path, records) -> dict:
    """Group records (phase, kind, atoms, info, (e, f, w)) into DeePMD systems phase/kind/n<N>."""
    groups = defaultdict(list)
    for phase, kind, at, info, lab in records:
        groups[(phase, kind, len(at))].append((at, lab))
    for (phase, kind, n), items in sorted(groups.items()):
        d = root / phase / kind / f"n{n}"
        (d / "set.000").mkdir(parents=True, exist_ok=True)
        (d / "type.raw").write_text("\n".join(["0"] * n) + "\n")
        (d / "type_map.raw").write_text("Ti\n")
        np.save(d / "set.000" / "box.npy", np.array([a.cell.array.ravel() for a, _ in items]))
        np.save(d / "set.000" / "coord.npy", np.array([a.positions.ravel() for a, _ in items]))
        np.save(d / "set.000" / "energy.npy", np.array([lab[0] for _, lab in items]))
        np.save(d / "set.000" / "force.npy", np.array([lab[1].ravel() for _, lab in items]))
        np.save(d / "set.000" / "virial.npy", np.array([lab[2].ravel() for _, lab in items]))
    return {f"{p}/{k}/n{n}": len(v) for (p, k, n), v in sorted(groups.items())}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "data" / "dft_chgnet"))
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--workers", type=int, default=2, help="processes, 1 torch thread each")
    ap.add_argument("--quick", action="store_true", help="a few configurations per kind (smoke test)")
    args = ap.parse_args(argv)

    import multiprocessing as mp
    from importlib.metadata import version

    rng = np.random.default_rng(args.seed)
    counts = {p: {k: (2 if args.quick else n) for k, n in ks.items()} for p, ks in COUNTS.items()}
    schedule = ((3000, 9, 2), (1900, 9, 2)) if args.quick else LIQUID_SCHEDULE
    static = make_static(rng, counts)

    t0 = time.time()
    with mp.get_context("fork").Pool(args.workers, _init_worker, (1, args.seed)) as pool:
        liquid = pool.apply_async(run_liquid, (args.seed, schedule))  # runs beside the static jobs
        static_labels = []
        for i, lab in enumerate(pool.imap(_label_static, [r[2] for r in static], chunksize=4)):
            static_labels.append(lab)
            if i % 50 == 0:
                print(f"  {i}/{len(static)} static labelled ({time.time() - t0:.0f} s)", flush=True)
        t_static = time.time() - t0
        liquid_records, t_liquid = liquid.get()
    t_total = time.time() - t0
    records = [(p, k, at, info, lab) for (p, k, at, info), lab in zip(static, static_labels)] + liquid_records

    out = Path(args.out)
    for p in ("hcp", "bcc", "fcc", "omega", "liquid"):  # replace earlier output, keep README.md
        shutil.rmtree(out / p, ignore_errors=True)
    systems = write_deepmd(out, records)
    n_atoms = [len(r[2]) for r in records]
    manifest = {
        "what": "CHGNet labels (NOT DFT) of generated Ti configurations; see README.md",
        "chgnet_version": version("chgnet"), "chgnet_model": "0.3.0", "torch_version": version("torch"),
        "ase_version": version("ase"), "python": platform.python_version(),
        "seed": args.seed, "quick": args.quick,
        "n_configurations": len(records), "n_atoms_total": int(sum(n_atoms)),
        "atoms_per_configuration": [int(min(n_atoms)), int(max(n_atoms))],
        "phases": dict(Counter(r[0] for r in records)),
        "kinds": {f"{p}/{k}": c for (p, k), c in sorted(Counter((r[0], r[1]) for r in records).items())},
        "systems": systems,
        "labelling_wall_s": {"static": round(t_static, 1), "liquid_md": round(t_liquid, 1),
                             "total": round(t_total, 1)},
        "workers": args.workers, "torch_threads_per_worker": 1,
        "units": {"energy": "eV", "force": "eV/A", "virial": "eV (W = -V*stress)", "box/coord": "A"},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(json.dumps({k: manifest[k] for k in ("n_configurations", "phases", "labelling_wall_s")}))


if __name__ == "__main__":
    main()
