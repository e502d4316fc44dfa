"""DimeNet++ potential plugin: bases, invariances, forces, strain, NVE conservation, periodic
replicas, triplet/edge capacity overflow and growth, plugin registration, Langevin sampling.

A small network (embed 16, 2 interaction blocks) keeps compile times low; shapes are shared
between tests (fixed neighbor-list and model capacities) so jitted functions are reused.
"""
import dataclasses

import ase.build
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import spherical_jn

from fusepot.core import mechanics
from fusepot.core import neighbors as nb
from fusepot.core.interfaces import StatePoint
from fusepot.core.plugins import BuildContext, get_plugin_manager
from fusepot.core.system import Configuration, from_ase
from fusepot.plugins.dimenet import DimeNetPP, basis

SMALL = dict(embed_size=16, out_embed_size=16, type_embed_size=8, int_embed_size=8, basis_embed_size=4,
             n_interaction_blocks=2, n_dense_output=2, cutoff=4.0, seed=3)
NBR_CAP = 1024  # one neighbor-list capacity for all 8-atom tests: jitted functions compile once
K, E_CAP = 24, 400

_energy = eqx.filter_jit(lambda p, c, n: p.energy(c, n))
_energy_forces = eqx.filter_jit(mechanics.energy_and_forces)
_energy_forces_virial = eqx.filter_jit(mechanics.energy_forces_virial)
# energy and parameter gradient in one compiled program per model structure (op by op, the
# gradient costs several times its compilation)
_energy_and_grad = eqx.filter_jit(eqx.filter_value_and_grad(lambda p, c, n: p.energy(c, n)))


def build(species=("Ti", "Al"), **kw):
    params = dict(SMALL, max_neighbors=K, edge_capacity=E_CAP)
    params.update(kw)
    return get_plugin_manager().build("potential", "dimenet_pp", params, BuildContext(species=list(species)))


def nbrs_for(conf, cutoff=SMALL["cutoff"], skin=0.3, cap=NBR_CAP):
    return nb.allocate(conf.positions, conf.box, cutoff, skin, min_capacity=cap)


def random_conf(seed=0, n=8, length=6.0):
    """n atoms in a cubic box with a minimum separation of 2 Å (two species)."""
    rng = np.random.default_rng(seed)
    pos = []
    while len(pos) < n:
        p = rng.uniform(0, length, 3)
        box = length * np.eye(3)
        if all(np.linalg.norm((p - q) - length * np.round((p - q) / length)) > 2.0 for q in pos):
            pos.append(p)
    species = np.arange(n) % 2
    return Configuration(np.array(pos), species, length * np.eye(3))


def energy(pot, conf):
    return float(_energy(pot, conf, nbrs_for(conf)))


# -- bases ---------------------------------------------------------------------------------
def test_spherical_bessel_closed_forms_match_scipy():
    x = np.linspace(0.05, 25.0, 2000)
    for l in range(7):
        np.testing.assert_allclose(np.asarray(basis.spherical_jl(l, jnp.asarray(x))), spherical_jn(l, x),
                                   atol=1e-10 * max(1, 10**l) + 1e-12)
    z = basis.spherical_bessel_zeros(7, 6)
    for l in range(7):
        np.testing.assert_allclose(spherical_jn(l, z[l]), 0.0, atol=1e-12)
        assert np.all(np.diff(z[l]) > 0)


def test_chebyshev_spherical_basis_equals_the_closed_forms_and_their_derivatives():
    """spherical_radial (Chebyshev series, one matmul) is the same function as the closed forms
    of j_l (spherical_jl): values and x-derivatives agree to float64 rounding over (0, 1), and
    in float32 to float32 rounding."""
    x = jnp.asarray(np.linspace(0.02, 0.999, 3001))
    cheb, closed = basis.spherical_radial(x, 7, 6), basis.spherical_radial_closed_form(x, 7, 6)
    scale = float(jnp.max(jnp.abs(closed)))
    assert cheb.shape == closed.shape == (3001, 7, 6)
    np.testing.assert_allclose(np.asarray(cheb), np.asarray(closed), atol=1e-11 * scale)
    d_cheb = jax.vmap(jax.jacfwd(lambda t: basis.spherical_radial(t, 7, 6)))(x)
    d_closed = jax.vmap(jax.jacfwd(lambda t: basis.spherical_radial_closed_form(t, 7, 6)))(x)
    np.testing.assert_allclose(np.asarray(d_cheb), np.asarray(d_closed), atol=1e-8 * float(jnp.max(jnp.abs(d_closed))))
    c32 = basis.spherical_radial(x.astype(jnp.float32), 7, 6)
    assert c32.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(c32), np.asarray(closed), atol=2e-6 * scale)


def test_harmonic_features_reproduce_legendre_polynomials():
    """P_l(u·v) = f_l(u)·f_l(v) on the unit sphere with 2l+1 features per l (addition theorem)."""
    rng = np.random.default_rng(7)
    u, v = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in rng.normal(size=(2, 200, 3)))
    fu, fv = (np.asarray(basis.harmonic_features(jnp.asarray(x), 7)) for x in (u, v))
    assert fu.shape == (200, 49)
    ref = np.asarray(basis.legendre_harmonics(jnp.asarray(np.sum(u * v, axis=1)), 7))
    off = 0
    for l in range(7):
        got = np.sum(fu[:, off:off + 2 * l + 1] * fv[:, off:off + 2 * l + 1], axis=1) * np.sqrt((2 * l + 1) / (4 * np.pi))
        np.testing.assert_allclose(got, ref[:, l], atol=1e-12)
        off += 2 * l + 1


def test_triplet_aggregation_equals_the_explicit_triplet_sum():
    """The per-atom moment contraction (model.triplet_aggregate) equals the plain DimeNet sum over
    triplets: for edge p = (i -> j), Σ over edges q = (j -> k) except the back edge (j -> i, same
    image) of Σ_l Y_l^0(α_pq) b[q, l] — in a small cell where pairs recur through several images."""
    from fusepot.plugins.dimenet.graph import build_graph
    from fusepot.plugins.dimenet.model import to_slots, triplet_aggregate, triplet_features

    atoms = ase.build.bulk("Ti", "hcp", a=2.95, c=4.68)  # 2 atoms: each pair appears many times
    atoms.rattle(0.1, seed=2)
    conf, _ = from_ase(atoms)
    nbrs = nb.allocate(conf.positions, conf.box, 5.0, 0.0)
    g = build_graph(conf, nbrs, 5.0, 64, 256)
    assert not bool(g.max_degree > 64) and int(g.n_edges) <= 256
    n_l, n_i = 7, 3
    b = jnp.asarray(np.random.default_rng(0).normal(size=(256, n_l, n_i)))
    r = jnp.sqrt(jnp.where(g.valid, jnp.sum(g.d ** 2, axis=-1), 1.0))
    assert bool(g.paired)
    b_slots = to_slots(b, g)  # (N, K, L, I)
    got = np.asarray(triplet_aggregate(b_slots, triplet_features(g.d / r[:, None], g, n_l), g))

    d, valid = np.asarray(g.d), np.asarray(g.valid)
    centre, neighbor, bb = np.asarray(g.centre), np.asarray(g.neighbor), np.asarray(b)
    unit = d / np.where(valid, np.linalg.norm(d, axis=1), 1.0)[:, None]
    n_triplets = 0
    for p in np.flatnonzero(valid):
        i, j = centre[p], neighbor[p]
        ref = np.zeros(n_i)
        for q in np.flatnonzero(valid & (centre == j)):
            if neighbor[q] == i and np.allclose(d[q], -d[p]):
                continue  # the back edge
            y = np.asarray(basis.legendre_harmonics(jnp.asarray(unit[p] @ unit[q]), n_l))
            ref += y @ bb[q]
            n_triplets += 1
        np.testing.assert_allclose(got[p], ref, rtol=1e-10, atol=1e-10)
    assert n_triplets > 1000


def test_reverse_edge_pairing_holds_in_small_and_triclinic_cells_and_a_missing_reverse_gives_nan():
    """Every active edge (i, j, n) finds its reverse (j, i, −n) (the triplet layout relies on it),
    in a 2-atom cell whose pairs recur through many images and in a sheared cell; a list that
    lost one direction of a pair makes the energy NaN instead of a silently wrong number."""
    from fusepot.plugins.dimenet.graph import build_graph

    sheared = ase.build.bulk("Ti", "bcc", a=3.3).repeat((2, 2, 1))
    sheared.set_cell(sheared.cell[:] @ np.array([[1, 0.2, 0.1], [0, 1, 0.15], [0, 0, 1]]), scale_atoms=True)
    for atoms in (ase.build.bulk("Ti", "hcp", a=2.95, c=4.68), sheared):
        atoms.rattle(0.1, seed=5)
        conf, _ = from_ase(atoms)
        nbrs = nb.allocate(conf.positions, conf.box, 4.0, 0.3)
        g = build_graph(conf, nbrs, 4.0, 64, 512)
        assert bool(g.paired) and not bool(g.max_degree > 64) and int(g.n_edges) <= 512
        # in_position maps every edge to the slot of an edge pointing back: (j -> i) with −d
        valid = np.asarray(g.valid)
        slot_edge = np.asarray(g.out_edge).reshape(-1)[np.asarray(g.in_position)]
        assert np.all(np.asarray(g.centre)[slot_edge][valid] == np.asarray(g.neighbor)[valid])
        np.testing.assert_array_equal(np.asarray(g.d)[slot_edge][valid], -np.asarray(g.d)[valid])
    conf = random_conf(0)
    nbrs = nbrs_for(conf)
    pot = build()
    assert np.isfinite(float(_energy(pot, conf, nbrs)))
    d = np.asarray(nbrs.vectors(conf.positions, conf.box))
    active = np.flatnonzero(np.asarray(nbrs.mask) & (np.sum(d * d, axis=1) < SMALL["cutoff"] ** 2))
    one_way = eqx.tree_at(lambda n: n.mask, nbrs, nbrs.mask.at[active[0]].set(False))
    assert np.isnan(float(_energy(pot, conf, one_way)))


def test_envelope_and_basis_vanish_smoothly_at_cutoff():
    g = jax.grad(jax.grad(lambda x: basis.envelope(x, 6)))
    assert abs(float(basis.envelope(1.0 - 1e-9, 6))) < 1e-12 and abs(float(g(1.0 - 1e-9))) < 1e-6
    x = jnp.array([1.0 - 1e-7])
    assert np.max(np.abs(np.asarray(basis.spherical_radial(x, 7, 6)))) < 1e-10


# -- plugin ----------------------------------------------------------------------------------
def test_plugin_builds_with_paper_defaults_and_forbids_unknown_keys():
    pm = get_plugin_manager()
    pot = pm.build("potential", "dimenet_pp", {}, BuildContext(species=["Ti"]))
    assert isinstance(pot, DimeNetPP) and pot.cutoff == 5.0
    assert len(pot.interactions) == 4 and len(pot.outputs) == 5
    assert pot.species_embedding.shape == (1, 16) and pot.embed_rbf.weight.shape == (6, 32)
    blk = pot.interactions[0]
    assert blk.sbf1.weight.shape == (42, 8) and blk.down.weight.shape == (32, 16)
    assert len(blk.before_skip) == 1 and len(blk.after_skip) == 2 and len(pot.outputs[0].dense) == 3
    with pytest.raises(Exception):
        pm.build("potential", "dimenet_pp", {"embed_sise": 3}, BuildContext(species=["Ti"]))
    with pytest.raises(ValueError):
        pm.build("potential", "dimenet_pp", {"energy_shift": [1.0, 2.0]}, BuildContext(species=["Ti"]))


# -- invariances -----------------------------------------------------------------------------
def test_rotation_translation_permutation_invariance():
    pot = build()
    conf = random_conf(0)
    e0 = energy(pot, conf)
    assert np.isfinite(e0) and abs(e0) > 1e-3
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))
    rot = np.asarray(q) * np.sign(np.linalg.det(q))  # proper rotation
    c_rot = Configuration(np.asarray(conf.positions) @ rot.T, conf.species, np.asarray(conf.box) @ rot.T)
    c_tr = conf.replace(positions=conf.positions + jnp.array([0.3, -1.7, 2.9]))
    perm = np.random.default_rng(2).permutation(conf.n_atoms)
    c_perm = Configuration(np.asarray(conf.positions)[perm], np.asarray(conf.species)[perm], conf.box)
    for c in (c_rot, c_tr, c_perm):
        assert energy(pot, c) == pytest.approx(e0, rel=1e-10, abs=1e-10)
    # species matter (the test would be vacuous otherwise)
    c_swap = conf.replace(species=1 - conf.species)
    assert abs(energy(pot, c_swap) - e0) > 1e-6


def test_forces_are_minus_gradient_and_strain_derivative_matches_fd():
    pot = build()
    conf = random_conf(4)
    nbrs = nbrs_for(conf)
    _, f, w = _energy_forces_virial(pot, conf, nbrs)
    h = 1e-5
    for atom, axis in [(0, 0), (3, 1), (6, 2)]:
        dp = jnp.zeros_like(conf.positions).at[atom, axis].set(h)
        ep = _energy(pot, conf.replace(positions=conf.positions + dp), nbrs)
        em = _energy(pot, conf.replace(positions=conf.positions - dp), nbrs)
        assert float(f[atom, axis]) == pytest.approx(-(ep - em) / (2 * h), rel=1e-6, abs=1e-8)
    # virial: ∂U/∂ε via core.mechanics vs central differences of the (symmetric) strained energy
    d = -np.asarray(w)  # W = −∂U/∂ε
    for a, b in [(0, 0), (0, 1), (2, 2)]:
        eps = np.zeros((3, 3))
        eps[a, b] += 0.5 * h
        eps[b, a] += 0.5 * h
        ep = _energy(pot, conf.strained(jnp.asarray(eps)), nbrs)
        em = _energy(pot, conf.strained(jnp.asarray(-eps)), nbrs)
        # dU = Σ D_ab eps_ab = h (D_ab + D_ba) / 2 for the symmetric perturbation
        assert 0.5 * (d[a, b] + d[b, a]) == pytest.approx(float(ep - em) / (2 * h), rel=1e-5, abs=1e-7)


def test_strain_through_pair_vectors_equals_the_affine_strain():
    """The model sees positions and box only through nbrs.vectors, so the solid plugin's cheaper
    `pair_vectors` Born method (strain applied to the pair vectors) gives the affine result."""
    from fusepot.plugins.solid.born import pair_strain_energy_fn, strain_energy_fn

    conf = random_conf(4)
    nbrs, pot = nbrs_for(conf), build()
    e0 = jnp.zeros(6)
    affine = jax.grad(strain_energy_fn(pot, conf, nbrs))(e0)
    pairs = jax.grad(pair_strain_energy_fn(pot, conf, nbrs))(e0)
    assert float(jnp.max(jnp.abs(affine))) > 1e-3
    np.testing.assert_allclose(np.asarray(pairs), np.asarray(affine), rtol=1e-9, atol=1e-12)


def test_energy_is_continuous_and_flat_when_a_pair_crosses_the_cutoff():
    pot = build()
    base = np.asarray(random_conf(0).positions)
    # put atom 1 at distance r from atom 0, along a direction that keeps it clear of the others
    u = np.array([0.48, 0.6, 0.64])
    es = []
    for r in (SMALL["cutoff"] - 1e-3, SMALL["cutoff"] - 1e-7, SMALL["cutoff"] + 1e-7, SMALL["cutoff"] + 1e-3):
        pos = base.copy()
        pos[1] = pos[0] + r * u
        es.append(energy(pot, random_conf(0).replace(positions=jnp.asarray(pos))))
    # no jump: across ±1e-7 Å the change is the smooth O(δ) change of the ±1e-3 Å step, scaled
    assert abs(es[1] - es[2]) <= 1e-4 * abs(es[0] - es[3]) + 1e-9


# -- dynamics ----------------------------------------------------------------------------------
def test_nve_energy_conservation():
    """Velocity Verlet, 200 steps of 0.5 fs at ~600 K on 8 atoms (float64), neighbor list updated.

    Bound: max |E_tot(t) − E_tot(0)| < 1e-3 × (max U − min U) and < 2e-4 eV/atom.  Velocity
    Verlet's energy error is O(dt²) and bounded for a smooth U; a kink at the cutoff or a
    missing triplet would show up as a jump far above this.
    """
    from fusepot.core.units import BOLTZMANN_EV_PER_K, ps_to_internal

    pot = build(energy_scale=0.2)
    conf = random_conf(5)
    masses = jnp.full((8,), 47.867)
    nbrs = nbrs_for(conf)
    dt = ps_to_internal(0.5e-3)
    v = jax.random.normal(jax.random.PRNGKey(0), (8, 3)) * jnp.sqrt(600 * BOLTZMANN_EV_PER_K / masses)[:, None]
    v = v - jnp.mean(v, axis=0)

    @eqx.filter_jit
    def run(pot, x, v, nbrs):
        def step(c, _):
            x, v, f, n = c
            v = v + 0.5 * dt * f / masses[:, None]
            x = x + dt * v
            n = nb.update(n, x, conf.box)
            e, f = mechanics.energy_and_forces(pot, conf.replace(positions=x), n)
            v = v + 0.5 * dt * f / masses[:, None]
            return (x, v, f, n), (e, 0.5 * jnp.sum(masses[:, None] * v * v), n.overflow | pot.overflow(
                conf.replace(positions=x), n))

        e0, f0 = mechanics.energy_and_forces(pot, conf.replace(positions=x), nbrs)
        _, (u, kin, ovf) = jax.lax.scan(step, (x, v, f0, nbrs), None, length=200)
        return e0 + 0.5 * jnp.sum(masses[:, None] * v * v), u, kin, ovf

    e_start, u, kin, ovf = run(pot, conf.positions, v, nbrs)
    assert not bool(jnp.any(ovf))
    etot = np.asarray(u + kin)
    drift = np.max(np.abs(etot - float(e_start)))
    swing = float(jnp.max(u) - jnp.min(u))
    assert swing > 1e-3, "the test needs a non-trivial potential-energy swing"
    assert drift < 1e-3 * swing and drift / 8 < 2e-4, (drift, swing)


def test_periodic_cell_and_its_replica_have_the_same_energy_per_atom():
    """4-atom hcp Ti cell (narrower than 2 r_c: several images of each atom) vs its 2×2×2 replica."""
    atoms = ase.build.bulk("Ti", "hcp", a=2.951, c=4.684, orthorhombic=True)
    atoms.positions += 0.1 * np.random.default_rng(3).normal(size=atoms.positions.shape)
    pot = build(species=["Ti"], max_neighbors=0, edge_capacity=0)
    per_atom = []
    for reps in (1, 2):
        conf, _ = from_ase(atoms.repeat((reps, reps, reps)))
        nbrs = nb.allocate(conf.positions, conf.box, pot.cutoff, 0.3)
        assert not bool(pot.overflow(conf, nbrs))
        per_atom.append(float(_energy(pot, conf, nbrs)) / conf.n_atoms)
    assert per_atom[0] == pytest.approx(per_atom[1], rel=1e-10)


def test_overflow_is_flagged_and_grow_fixes_it_with_identical_parameters():
    from fusepot.plugins.dimenet.graph import host_counts

    conf = random_conf(0)
    nbrs = nbrs_for(conf)
    ref = build()
    e_ref = float(_energy(ref, conf, nbrs))
    for small in (dict(edge_capacity=8), dict(max_neighbors=2)):
        pot = dataclasses.replace(ref, **small)
        assert bool(pot.overflow(conf, nbrs))
        for _ in range(20):
            if not bool(pot.overflow(conf, nbrs)):
                break
            bigger = pot.grow(conf, nbrs)
            assert bigger.max_neighbors > pot.max_neighbors or bigger.edge_capacity > pot.edge_capacity
            pot = bigger
        assert not bool(pot.overflow(conf, nbrs))
        # only the capacity that overflowed grew (padding costs as much as used rows) ...
        kept = "max_neighbors" if "edge_capacity" in small else "edge_capacity"
        assert getattr(pot, kept) == getattr(ref, kept)
        leaves, ref_leaves = jax.tree_util.tree_leaves(pot), jax.tree_util.tree_leaves(ref)
        assert len(leaves) == len(ref_leaves) and all(bool(jnp.all(a == b)) for a, b in zip(leaves, ref_leaves))
    # ... unless the other one was nearly full too (> 90 %): then both grow, saving a recompilation
    n_edges, degree = host_counts(conf, nbrs, ref.r_cut)
    nearly_full = dataclasses.replace(ref, edge_capacity=8, max_neighbors=int(degree / 0.95))
    assert degree <= nearly_full.max_neighbors
    grown = nearly_full.grow(conf, nbrs)
    assert grown.edge_capacity >= n_edges and grown.max_neighbors > nearly_full.max_neighbors
    # the grown model (its K differs from ref's, so this compiles once more) gives ref's energy
    assert float(_energy(pot, conf, nbrs)) == pytest.approx(e_ref, rel=1e-10)


def test_resized_model_and_structure_transfer_keep_the_energy_and_gradient():
    """A model sized for big DFT cells is resized for a small MD cell (Potential.resized); the
    trainers move parameters and gradients between the two structures (optim.with_structure)."""
    from fusepot.core.optim import trainable, with_structure

    conf = random_conf(1)
    nbrs = nbrs_for(conf)
    big = build(max_neighbors=3 * K, edge_capacity=4 * E_CAP)
    small = big.resized(conf, nbrs)
    assert small.edge_capacity < big.edge_capacity and small.max_neighbors < big.max_neighbors
    assert not bool(small.overflow(conf, nbrs))
    e_small, g_small = _energy_and_grad(small, conf, nbrs)
    e_big, g_big = _energy_and_grad(big, conf, nbrs)
    assert float(e_small) == pytest.approx(float(e_big), rel=1e-10)
    with pytest.raises(ValueError):  # eqx.combine refuses different static fields ...
        eqx.combine(trainable(big)[0], trainable(small)[1])
    # ... with_structure moves the parameters of a perturbed big model into the small structure
    moved_from = jax.tree_util.tree_map(lambda a: a * 1.01 if eqx.is_inexact_array(a) else a, big)
    moved = with_structure(moved_from, small)
    assert moved.edge_capacity == small.edge_capacity
    assert float(_energy_and_grad(moved, conf, nbrs)[0]) == pytest.approx(
        float(_energy_and_grad(moved_from, conf, nbrs)[0]), rel=1e-10)
    g_back = with_structure(g_small, trainable(big)[0])
    for a, b in zip(jax.tree_util.tree_leaves(g_back), jax.tree_util.tree_leaves(g_big)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-8, atol=1e-12)
    with pytest.raises(ValueError, match="not versions of the same model"):
        with_structure(big, {"a": 1.0})


def test_float32_energy_agrees_with_float64():
    conf = random_conf(0)
    pot = build()
    e64 = float(_energy(pot, conf, nbrs_for(conf)))
    pot32 = get_plugin_manager().build("potential", "dimenet_pp", dict(SMALL, max_neighbors=K, edge_capacity=E_CAP),
                                       BuildContext(species=["Ti", "Al"], dtype=jnp.float32))
    c32 = Configuration(np.asarray(conf.positions, np.float32), conf.species, np.asarray(conf.box, np.float32))
    e32 = _energy(pot32, c32, nb.allocate(c32.positions, c32.box, pot32.cutoff, 0.3))
    assert e32.dtype == jnp.float32  # (float32 forces and MD: benchmarks/bench_dimenet_speed.py)
    assert float(e32) == pytest.approx(e64, rel=1e-4)


def test_langevin_ensemble_runs_a_few_frames():
    pm = get_plugin_manager()
    conf = random_conf(5)
    masses = np.full(conf.n_atoms, 47.867)
    pot = build(energy_scale=0.2)
    ens = pm.build("ensemble", "nvt_langevin", {"timestep_fs": 0.5, "production_ps": 0.005, "sample_every_ps": 0.0025,
                                                "neighbor_skin": 0.3}, BuildContext(species=["Ti", "Al"]))
    traj, carry = ens.sample(pot, conf, masses, StatePoint(300.0), jax.random.PRNGKey(0))
    assert traj.n_frames == 2 and np.all(np.isfinite(np.asarray(traj.positions)))
    last = traj.frame(1).conf
    assert float(traj.ref_energy[-1]) == pytest.approx(energy(carry.potential, last), rel=1e-8)
