"""Cell-list neighbor search (core/neighbors.py): same pairs as the dense O(N²) search, overflow
flags for full cells and shrinking boxes, agreement with ASE."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.neighborlist import neighbor_list

from fusepot.core import neighbors as nb

DENSITY = 0.0516  # 1/Å³, liquid Ti


def _pairs(nbrs, positions, box):
    """{(i, j, n1, n2, n3): r_ij} for the real pairs."""
    m = np.asarray(nbrs.mask)
    i, j = np.asarray(nbrs.senders)[m], np.asarray(nbrs.receivers)[m]
    s = np.rint(np.asarray(nbrs.shifts)[m]).astype(int)
    v = np.asarray(nbrs.vectors(jnp.asarray(positions), jnp.asarray(box)))[m]
    keys = [(a, b, *c) for a, b, c in zip(i.tolist(), j.tolist(), s.tolist())]
    assert len(set(keys)) == len(keys), "duplicate pairs"
    return dict(zip(keys, v))


def _assert_same(cl, dense, positions, box):
    assert cl.cells is not None and dense.cells is None
    assert not bool(cl.overflow) and not bool(dense.overflow)
    a, b = _pairs(cl, positions, box), _pairs(dense, positions, box)
    assert a.keys() == b.keys()
    keys = sorted(a)
    np.testing.assert_allclose(np.stack([a[k] for k in keys]), np.stack([b[k] for k in keys]), atol=1e-12)
    snd = np.asarray(cl.senders)[np.asarray(cl.mask)]
    assert np.all(np.diff(snd) >= 0), "cell-list pairs are sorted by sender"
    return a


def _fcc_2048(jitter, seed=0):
    atoms = bulk("Ti", "fcc", a=(4 / DENSITY) ** (1 / 3), cubic=True).repeat(8)
    rng = np.random.default_rng(seed)
    return atoms.get_positions() + rng.normal(0, jitter, (len(atoms), 3)), np.asarray(atoms.cell.array)


_update = jax.jit(lambda n, p, b: nb.update(n, p, b, force=True))


def test_random_liquid_2048_same_as_dense_and_ase():
    rng = np.random.default_rng(1)
    n = 2048
    box = np.eye(3) * (n / DENSITY) ** (1 / 3)
    pos = rng.uniform(0, 1, (n, 3)) @ box
    cl = nb.allocate(pos, box, 5.0, skin=0.5)  # default: cell list for N >= 512
    dense = nb.allocate(pos, box, 5.0, skin=0.5, cell_list=False)
    pairs = _assert_same(cl, dense, pos, box)
    # ASE reference (cutoff + skin, wrapped positions)
    i, j, s = neighbor_list("ijS", Atoms("Ti" * n, positions=pos, cell=box, pbc=True), 5.5)
    assert set(pairs) == {(a, b, *c) for a, b, c in zip(i.tolist(), j.tolist(), s.tolist())}
    # jitted update with moved atoms and a slightly strained box, both paths
    pos2 = pos + rng.normal(0, 0.2, pos.shape)
    box2 = box * 1.01
    _assert_same(_update(cl, pos2, box2), _update(dense, pos2, box2), pos2, box2)


def test_rattled_fcc_unwrapped_same_as_dense():
    pos, box = _fcc_2048(0.3)
    rng = np.random.default_rng(2)
    pos = pos + rng.integers(-2, 3, (len(pos), 3)) @ box  # unwrapped: atoms several boxes away
    cl = nb.allocate(pos, box, 4.0, skin=0.5)
    _assert_same(cl, nb.allocate(pos, box, 4.0, skin=0.5, cell_list=False), pos, box)
    pos2 = pos + rng.normal(0, 0.3, pos.shape)
    _assert_same(_update(cl, pos2, box), nb.allocate(pos2, box, 4.0, skin=0.5, cell_list=False), pos2, box)


def test_triclinic_same_as_dense():
    atoms = bulk("Ti", "fcc", a=(4 / DENSITY) ** (1 / 3)).repeat((13, 13, 13))  # rhombohedral primitive cells
    rng = np.random.default_rng(3)
    box = np.asarray(atoms.cell.array)
    pos = atoms.get_positions() + rng.normal(0, 0.3, (len(atoms), 3)) + rng.integers(-1, 2, (len(atoms), 3)) @ box
    cl = nb.allocate(pos, box, 5.2, skin=0.3)
    assert cl.cell_reach == 1
    _assert_same(cl, nb.allocate(pos, box, 5.2, skin=0.3, cell_list=False), pos, box)
    # large cutoff: cells of width >= (cutoff + skin) / 2 and a 125-cell stencil (forced: the
    # automatic choice prefers the dense search there)
    cl = nb.allocate(pos, box, 8.2, skin=0.3, cell_list=True)
    assert cl.cell_reach == 2
    _assert_same(cl, nb.allocate(pos, box, 8.2, skin=0.3, cell_list=False), pos, box)


def test_cell_overflow_flagged_and_reallocation_fixes_it():
    pos, box = _fcc_2048(0.2, seed=4)
    cl = nb.allocate(pos, box, 4.0, skin=0.5)
    assert cl.cells is not None
    # pack 100 atoms into a 1 Å ball: far more than any cell was sized for
    rng = np.random.default_rng(5)
    pos2 = pos.copy()
    pos2[:100] = box.sum(0) / 2 + rng.uniform(-0.5, 0.5, (100, 3))
    out = _update(cl, pos2, box)
    assert bool(out.overflow)
    with pytest.raises(OverflowError):
        nb.check(out)
    re = nb.allocate(pos2, box, 4.0, skin=0.5)
    assert re.cell_capacity > cl.cell_capacity and not bool(re.overflow)
    i, j, s = neighbor_list("ijS", Atoms("Ti" * len(pos2), positions=pos2, cell=box, pbc=True), 4.5)
    assert set(_pairs(re, pos2, box)) == {(a, b, *c) for a, b, c in zip(i.tolist(), j.tolist(), s.tolist())}


def test_shrinking_box_flagged():
    r = 5.0
    rng = np.random.default_rng(6)
    box = np.eye(3) * 3.05 * r  # 3 cells of width 1.017 r per axis
    pos = rng.uniform(0, 1, (600, 3)) @ box
    cl = nb.allocate(pos, box, r - 0.5, skin=0.5, cell_list=True)
    assert cl.cells == (3, 3, 3)
    ok = _update(cl, pos * 1.005, box * 1.005)
    assert not bool(ok.overflow)
    small = _update(cl, pos * 0.97, box * 0.97)  # cell width 0.987 r < r; minimum image still fine
    assert nb.minimum_image_ok(box * 0.97, r)
    assert bool(small.overflow)


def test_small_systems_keep_dense_path():
    pos, box = _fcc_2048(0.1)
    sel = np.all(pos < box[0, 0] / 2, axis=1)  # keep it simple: one octant -> ~256 atoms, new box
    assert nb.allocate(pos[sel], box / 2, 3.0, skin=0.3).cells is None
    with pytest.raises(ValueError):
        nb.allocate(pos, box, 12.0, skin=0.5, cell_list=True)  # < 3 cells per axis
