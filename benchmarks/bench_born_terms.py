"""Per-frame cost of the Born terms (σ^B and C^B, plugins/solid/born.py) relative to one
energy + forces evaluation, for 256-atom cells.  Goal: ≤ 8×.

    python benchmarks/bench_born_terms.py [--float64] [--repeats 5] [--skip-dimenet]

Potentials: Lennard-Jones (fcc Ar), EAM (toy analytic Cu tables, fcc), DimeNet++ (hcp Ti,
orthohexagonal cell; default hyperparameters, random weights) when the plugin is installed.
Columns: E+F; Born terms with the default `affine` method (any potential), Voigt tangents one
at a time (default `tangent_batch` 1) and all six together (x6); with `pair_vectors` (strain
applied to nbrs.vectors: for potentials that use nothing else), the same two ways; and
`jax.hessian` (jacfwd∘jacrev over the 6 Voigt strains, the obvious alternative).  Times are the best of `repeats` rounds of 3 calls after compilation;
ratios are medians over rounds of interleaved measurements (robust to a shared machine's load).
"""
from __future__ import annotations

import argparse
import time

import jax


def _interleaved(fns, *args, repeats: int = 5):
    """Per-call times of `fns` measured in alternation, round by round; returns (best time per
    fn, median over rounds of time/time of fns[0]) so that load changes on a shared machine
    affect numerator and denominator alike."""
    import numpy as np

    for fn in fns:
        jax.block_until_ready(fn(*args))  # compile
    rounds = []
    for _ in range(repeats):
        row = []
        for fn in fns:
            t0 = time.perf_counter()
            for _ in range(3):
                out = fn(*args)
            jax.block_until_ready(out)
            row.append((time.perf_counter() - t0) / 3)
        rounds.append(row)
    t = np.array(rounds)
    return t.min(axis=0), np.median(t / t[:, :1], axis=0)


def _toy_eam():
    import numpy as np

    from fusepot.plugins.classical.eam import EAM, EAMTables

    n_r, n_rho, rc = 500, 500, 5.0
    dr, drho = rc / (n_r - 1), 60.0 / (n_rho - 1)
    r = np.arange(n_r) * dr
    rho = np.arange(n_rho) * drho
    taper = np.clip((rc - r) / 1.0, 0.0, 1.0) ** 3
    dens = np.exp(-1.5 * (r - 2.55)) * taper
    phi = 0.3 * (np.exp(-2 * 1.4 * (r - 2.55)) - 2 * np.exp(-1.4 * (r - 2.55))) * taper
    tables = EAMTables(["Cu"], [29], [63.546], drho, dr, rc, (-np.sqrt(rho))[None], dens[None, None],
                       (r * phi)[None, None])
    return EAM.from_tables(tables)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--float64", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-dimenet", action="store_true")
    args = ap.parse_args()
    jax.config.update("jax_enable_x64", args.float64)

    import equinox as eqx
    import jax.numpy as jnp
    from ase.build import bulk

    from fusepot.core import neighbors as nb
    from fusepot.core.mechanics import energy_and_forces
    from fusepot.core.plugins import BuildContext, get_plugin_manager
    from fusepot.core.system import from_ase
    from fusepot.plugins.solid.born import born_terms, strain_energy_fn

    pm = get_plugin_manager()
    cases = [("lennard_jones (fcc Ar)", lambda: pm.build("potential", "lennard_jones", {"epsilon": 0.0104, "sigma": 3.4},
                                                          BuildContext(species=["Ar"])),
              bulk("Ar", "fcc", a=5.26, cubic=True).repeat((4, 4, 4)))]
    try:
        _toy_eam()
        cases.append(("eam (toy Cu, fcc)", _toy_eam, bulk("Cu", "fcc", a=3.615, cubic=True).repeat((4, 4, 4))))
    except ImportError:
        print("eam plugin not available: skipped")
    if not args.skip_dimenet and "dimenet_pp" in pm.names("potential"):
        cases.append(("dimenet_pp (hcp Ti)", lambda: pm.build("potential", "dimenet_pp", {}, BuildContext(species=["Ti"])),
                      bulk("Ti", "hcp", a=2.95, c=4.68, orthorhombic=True).repeat((4, 4, 4))))

    @eqx.filter_jit
    def e_f(pot, conf, nbrs):
        return energy_and_forces(pot, conf, nbrs)

    @eqx.filter_jit
    def born(pot, conf, nbrs):
        return born_terms(pot, conf, nbrs)

    @eqx.filter_jit
    def born6(pot, conf, nbrs):
        return born_terms(pot, conf, nbrs, tangent_batch=6)

    @eqx.filter_jit
    def born_pairs(pot, conf, nbrs):
        return born_terms(pot, conf, nbrs, method="pair_vectors")

    @eqx.filter_jit
    def born_pairs6(pot, conf, nbrs):
        return born_terms(pot, conf, nbrs, method="pair_vectors", tangent_batch=6)

    @eqx.filter_jit
    def born_rev_rev(pot, conf, nbrs):
        zero = jnp.zeros(6, conf.positions.dtype)
        u = strain_energy_fn(pot, conf, nbrs)
        return jax.grad(u)(zero), jax.hessian(u)(zero)

    print(f"device {jax.devices()[0].platform}, dtype {'float64' if args.float64 else 'float32'}; "
          f"times: best of {args.repeats} rounds of 3 calls; ratios: median over rounds vs E+F")
    print(f"{'potential':26s} {'N':>4s} {'E+F ms':>9s} {'Born ms':>9s} {'ratio':>6s} {'(x6) ms':>9s} {'ratio':>6s} "
          f"{'pair_vec ms':>12s} {'ratio':>6s} {'(x6) ms':>9s} {'ratio':>6s} {'jax.hessian':>12s} {'ratio':>6s}")
    for name, make, atoms in cases:
        conf, _ = from_ase(atoms)
        pot = make()
        nbrs = nb.allocate(conf.positions, conf.box, pot.cutoff, 0.5)
        try:
            pot = pot.grow(conf, nbrs) if bool(pot.overflow(conf, nbrs)) else pot
        except OverflowError:
            pass
        (t_ef, t_b, t_b6, t_p, t_p6, t_h), (_, r_b, r_b6, r_p, r_p6, r_h) = _interleaved(
            [e_f, born, born6, born_pairs, born_pairs6, born_rev_rev], pot, conf, nbrs, repeats=args.repeats)
        print(f"{name:26s} {conf.n_atoms:4d} {1e3 * t_ef:9.2f} {1e3 * t_b:9.2f} {r_b:6.2f} {1e3 * t_b6:9.2f} {r_b6:6.2f} "
              f"{1e3 * t_p:12.2f} {r_p:6.2f} {1e3 * t_p6:9.2f} {r_p6:6.2f} {1e3 * t_h:12.2f} {r_h:6.2f}")


if __name__ == "__main__":
    main()
