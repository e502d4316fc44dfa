"""Units, neighbor lists, mechanics (forces/virial from autodiff), block averaging, MD driver."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk
from ase.neighborlist import neighbor_list

from fusepot.core import mechanics, neighbors as nb, units
from fusepot.core.interfaces import StatePoint
from fusepot.core.md import MDFailure
from fusepot.core.plugins import get_plugin_manager
from fusepot.core.stats import block_average
from fusepot.core.system import Configuration, from_ase

from helpers import argon_fcc, lj_argon


def test_unit_conversions():
    assert units.EV_PER_A3_IN_GPA == pytest.approx(160.21766, rel=1e-6)
    assert units.TIME_UNIT_PS == pytest.approx(0.0101805, rel=1e-5)
    assert units.convert(1.0, "GPa", "MPa") == pytest.approx(1000.0)
    assert units.convert(5.3e-9, "m^2/s", "A^2/ps") == pytest.approx(0.53)
    assert units.convert(1.0, "kJ/mol", "meV") == pytest.approx(10.3643, rel=1e-4)
    with pytest.raises(ValueError, match="cannot convert"):
        units.convert(1.0, "GPa", "eV")
    with pytest.raises(ValueError, match="unknown unit 'furlong'"):
        units.canonical("furlong")


@pytest.mark.parametrize("atoms", [
    bulk("Ti", "hcp", a=2.95, c=4.68),  # cell far smaller than the cutoff: many images
    bulk("Cu", "fcc", a=3.6) * (2, 2, 2),  # triclinic primitive cell
    bulk("Ti", "hcp", a=2.95, c=4.68, orthorhombic=True).repeat((4, 4, 4)),  # minimum-image mode
])
def test_neighbor_list_matches_ase(atoms):
    atoms = atoms.copy()
    atoms.rattle(0.1, seed=1)
    atoms.positions += 3.3  # unwrapped positions are fine
    i, j, S = neighbor_list("ijS", atoms, 5.0)
    nl = nb.allocate(atoms.positions, atoms.cell.array, 5.0, skin=0.0)
    m = np.asarray(nl.mask)
    d = np.asarray(nl.vectors(jnp.asarray(atoms.positions), jnp.asarray(atoms.cell.array)))[m]
    ref = atoms.positions[j] - atoms.positions[i] + S @ atoms.cell.array
    a = sorted(zip(i, j, np.round(np.linalg.norm(ref, axis=1), 8)))
    b = sorted(zip(np.asarray(nl.senders)[m], np.asarray(nl.receivers)[m], np.round(np.linalg.norm(d, axis=1), 8)))
    assert a == b


def test_neighbor_overflow_is_flagged_not_silent():
    conf, _ = argon_fcc(2)
    nl = nb.allocate(conf.positions, conf.box, 5.0, skin=0.3, capacity_factor=1.0)
    squeezed = conf.positions * 0.75  # denser: more pairs than capacity
    upd = jax.jit(lambda n, r: nb.update(n, r, conf.box * 0.75, force=True))(nl, squeezed)
    assert bool(upd.overflow) and int(upd.count) > nl.capacity
    with pytest.raises(OverflowError, match="capacity"):
        nb.check(upd)


def test_forces_and_virial_match_finite_differences_triclinic():
    atoms = bulk("Ar", "fcc", a=5.26) * (3, 3, 3)  # primitive (triclinic) cell
    atoms.rattle(0.05, seed=2)
    conf, _ = from_ase(atoms)
    pot = lj_argon()
    nl = nb.allocate(conf.positions, conf.box, pot.cutoff, skin=0.0)
    u, f, w = mechanics.energy_forces_virial(pot, conf, nl)
    h = 1e-5
    e = lambda c: float(pot.energy(c, nl))
    k = 5
    dp = jnp.zeros_like(conf.positions).at[k, 1].set(h)
    fd = -(e(conf.replace(positions=conf.positions + dp)) - e(conf.replace(positions=conf.positions - dp))) / (2 * h)
    assert float(f[k, 1]) == pytest.approx(fd, rel=1e-6)
    for a, b in [(0, 0), (0, 2), (1, 2)]:
        eps = jnp.zeros((3, 3)).at[a, b].set(h / 2).at[b, a].add(h / 2)
        fd = (e(conf.strained(eps)) - e(conf.strained(-eps))) / (2 * h)
        assert -float(w[a, b]) == pytest.approx(fd, rel=1e-5)
    np.testing.assert_allclose(w, w.T, atol=1e-12)


def test_block_average_error_bar():
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 2.0, size=10000)
    est = block_average(x, 10)
    assert est.mean == pytest.approx(1.0, abs=0.1)
    assert est.error == pytest.approx(2.0 / 100, rel=0.5)


def test_md_temperature_and_nan_detection():
    conf, masses = argon_fcc(2)
    pm = get_plugin_manager()
    ens = pm.build("ensemble", "nvt_langevin", {"timestep_fs": 5, "production_ps": 3, "equilibration_ps": 1,
                                                "sample_every_ps": 0.1, "chunk_frames": 10})  # one chunk shape
    traj, carry = ens.sample(lj_argon(), conf, masses, StatePoint(50.0), jax.random.PRNGKey(0))
    ke = 0.5 * np.sum(np.asarray(masses)[None, :, None] * np.asarray(traj.velocities) ** 2, axis=(1, 2))
    t_kin = 2 * ke / (3 * conf.n_atoms * units.BOLTZMANN_EV_PER_K)
    assert t_kin.mean() == pytest.approx(50.0, rel=0.15)
    # overlapping atoms with a huge time step explode → MDFailure, not silent garbage
    bad = conf.replace(positions=conf.positions.at[1].set(conf.positions[0] + 0.3))
    boom = pm.build("ensemble", "nvt_langevin", {"timestep_fs": 50, "production_ps": 1, "sample_every_ps": 0.1})
    with pytest.raises((MDFailure, OverflowError)):
        boom.sample(lj_argon(), bad, masses, StatePoint(50.0), jax.random.PRNGKey(0))


def test_shrinking_box_beyond_image_set_is_flagged():
    conf, _ = argon_fcc(3)  # 15.8 Å cube: minimum image for r = 5.5 Å
    nl = nb.allocate(conf.positions, conf.box, 5.0, skin=0.5)
    assert nl.minimum_image
    ok = nb.update(nl, conf.positions, conf.box)
    assert not bool(ok.overflow)
    small = conf.box * 0.68  # 10.7 Å < 2 (cutoff + skin): minimum image no longer exact
    bad = nb.update(nl, conf.positions * 0.68, small)
    assert bool(bad.overflow)


def test_md_reallocation_covers_the_narrowest_box_of_a_chunk():
    """An NPT chunk whose box shrank below the list's image set: the MD driver reallocates with a
    reach wide enough for the narrowest box of the chunk (else it would fail again and again)."""
    from fusepot.core.md import _skin_for_boxes

    conf, _ = argon_fcc(1, a=5.6)  # 4 atoms; reach 5.5 Å needs one image shell at 5.6 Å, two at 5.04 Å
    cutoff, skin = 5.0, 0.5
    boxes = np.stack([np.asarray(conf.box) * f for f in (1.0, 0.95, 0.9)])
    plain = nb.allocate(conf.positions, conf.box, cutoff, skin)
    assert bool(nb.update(plain, conf.positions * 0.9, boxes[-1]).overflow)  # images no longer cover
    wide_skin = _skin_for_boxes(cutoff, skin, conf.box, boxes)
    assert wide_skin > skin
    # (pair capacity for the denser box comes from the driver's growing capacity factor on retry)
    wide = nb.allocate(conf.positions, conf.box, cutoff, wide_skin, capacity_factor=3.0)
    shrunk = nb.update(wide, conf.positions * 0.9, boxes[-1])
    assert not bool(shrunk.overflow)
    # the list still holds every pair within the cutoff in the shrunk box (compare with a fresh one)
    fresh = nb.allocate(conf.positions * 0.9, boxes[-1], cutoff, 0.0)
    d = lambda nl, box: np.sort(np.linalg.norm(np.asarray(
        (conf.positions * 0.9)[nl.receivers] - (conf.positions * 0.9)[nl.senders] + nl.shifts @ box), axis=1)[np.asarray(nl.mask)])
    close = lambda x: x[x < cutoff]
    np.testing.assert_allclose(close(d(shrunk, boxes[-1])), close(d(fresh, boxes[-1])), rtol=1e-10)
    assert _skin_for_boxes(cutoff, skin, conf.box, boxes[:1] * 1.1) == skin  # growing boxes: unchanged
