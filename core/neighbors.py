"""Periodic neighbor lists with explicit image shifts and fixed capacity.

A pair (i, j, n) means atom j seen from atom i through the periodic image with integer cell
offset n: r_ij = r_j - r_i + n @ box.  Keeping the integer shifts (instead of a minimum-image
rounding inside the energy) makes energies smooth in positions *and* in the box, so the strain
derivative (virial, Born terms) is exact, and small cells (cutoff larger than half the cell)
are handled by listing several images.

Following jax-md's split: `allocate` runs on the host (numpy, may choose shapes), `update`
is jit-compatible and keeps shapes; it sets `overflow` when more pairs exist than fit.  The
caller must check `overflow` and reallocate; fusepot's ensembles and trainers do.

Candidate search: dense (all N² pairs × images) for small systems and small cells; for large
systems in minimum-image mode a cell list (`choose_cells`, `_cell_candidates`): atoms binned into
cells of fixed capacity M (static), candidates from the (2k+1)³ surrounding cells, O(N·27·M).
A cell holding more than M atoms, or a box shrunk below the cell grid, sets `overflow` too.
Both searches give the same (i, j, shift) pairs, sorted by sender.
"""
from __future__ import annotations

import functools
import itertools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


class NeighborList(eqx.Module):
    """Directed pair list (each unordered pair appears twice: i->j and j->i)."""

    senders: jnp.ndarray  # (capacity,) int32, the central atom i
    receivers: jnp.ndarray  # (capacity,) int32, the neighbor j
    shifts: jnp.ndarray  # (capacity, 3) float, integer cell offsets of j
    mask: jnp.ndarray  # (capacity,) bool, True for real pairs
    reference_positions: jnp.ndarray  # positions at the last build (skin test)
    reference_box: jnp.ndarray
    overflow: jnp.ndarray  # () bool: a build needed more than `capacity` slots
    count: jnp.ndarray  # () int32: pairs found at the last build
    images: jnp.ndarray  # (n_images, 3) candidate cell offsets; (1, 3) zeros in minimum-image mode
    cutoff: float = eqx.field(static=True)
    skin: float = eqx.field(static=True)
    minimum_image: bool = eqx.field(static=True, default=False)
    # cell-list search (minimum-image mode only): cells per axis, or None for the dense search,
    # and the fixed number of atoms a cell may hold (a fuller cell sets `overflow`)
    cells: tuple | None = eqx.field(static=True, default=None)
    cell_capacity: int = eqx.field(static=True, default=0)
    cell_reach: int = eqx.field(static=True, default=1)  # k: cells >= (cutoff+skin)/k wide, (2k+1)³ stencil

    @property
    def capacity(self) -> int:
        return self.senders.shape[0]

    def vectors(self, positions, box):
        """Pair vectors r_j - r_i + n·box, shape (capacity, 3); padded pairs give zeros."""
        d = positions[self.receivers] - positions[self.senders] + self.shifts @ box
        return jnp.where(self.mask[:, None], d, 0.0)


def _perpendicular_widths(box: np.ndarray) -> np.ndarray:
    vol = abs(np.linalg.det(box))
    a, b, c = box
    return vol / np.array([np.linalg.norm(np.cross(b, c)), np.linalg.norm(np.cross(c, a)), np.linalg.norm(np.cross(a, b))])


def image_offsets(box, r_max: float) -> np.ndarray:
    """All integer cell offsets that can hold a neighbor within r_max (any atom in the cell)."""
    box = np.asarray(box, dtype=np.float64)
    if abs(np.linalg.det(box)) <= 0:
        raise ValueError(f"box has non-positive volume: {box.tolist()}")
    # wrapped fractional differences lie in (-1, 1); a neighbor within r_max needs
    # |Δs_k + n_k| <= r_max / w_k, hence |n_k| <= ceil(r_max / w_k).
    reach = np.ceil(r_max / _perpendicular_widths(box)).astype(int)
    return np.array(list(itertools.product(*[range(-k, k + 1) for k in reach])), dtype=np.float64)


def minimum_image_ok(box, r_max: float) -> bool:
    """Minimum image is exact when every perpendicular width exceeds 2 r_max."""
    return bool(np.all(_perpendicular_widths(np.asarray(box, dtype=np.float64)) > 2 * r_max))


def _candidate_pairs(positions, box, images, cutoff, atom_mask, minimum_image=False):
    """Dense candidate distances for all (i, j, image) — used by the jitted update.

    Memory is O(N² · n_images); in minimum-image mode n_images is 1.
    """
    inv = jnp.linalg.inv(box)
    frac = positions @ inv
    # wrap into [0,1) for the candidate search; record the integer part to correct shifts
    wrap = jnp.floor(frac)
    fw = frac - wrap
    if minimum_image:
        ds = fw[None, :, :] - fw[:, None, :]
        img = -jnp.round(ds)  # (N, N, 3) per-pair image
        d = ((ds + img) @ box)[:, :, None, :]
        images_ij = img[:, :, None, :]
    else:
        pos_w = fw @ box
        d = pos_w[None, :, None, :] - pos_w[:, None, None, :] + (images @ box)[None, None, :, :]
        images_ij = None
    r2 = jnp.sum(d * d, axis=-1)  # (N, N, I)
    n = positions.shape[0]
    i_idx = jnp.arange(n)
    zero_image = jnp.all(images == 0, axis=-1)
    self_pair = (i_idx[:, None, None] == i_idx[None, :, None]) & zero_image[None, None, :]
    ok = (r2 < cutoff * cutoff) & ~self_pair & atom_mask[:, None, None] & atom_mask[None, :, None]
    return ok, wrap, images_ij


def _cell_coords(fw, cells):
    nc = jnp.asarray(cells, jnp.int32)
    return jnp.clip(jnp.floor(fw * nc).astype(jnp.int32), 0, nc - 1)


def _cell_id(c3, cells):
    return (c3[..., 0] * cells[1] + c3[..., 1]) * cells[2] + c3[..., 2]


def _stencil(reach: int) -> np.ndarray:
    return np.array(list(itertools.product(range(-reach, reach + 1), repeat=3)), dtype=np.int32)  # ((2k+1)³, 3)


def _cell_candidates(positions, box, cutoff, atom_mask, cells, cell_capacity, reach=1):
    """Cell-list candidates (minimum-image mode, >= 2k+1 cells per axis of width >= cutoff / k).

    Atoms are binned by wrapped fractional coordinate into a (n_cells, M) table (stable argsort,
    so each cell lists its atoms by increasing index); atom i's candidates are the atoms of the
    S = (2k+1)³ cells around its own (periodic; k = `reach`, 27 cells for k = 1), shape (N, S·M).
    A pair closer than `cutoff` has |Δs_a| < cutoff / w_a <= k / n_a in fractional coordinates
    along every axis a, so its cell indices differ by at most k: no pair is missed.
    Returns the accepted mask `ok` (N, S·M), the candidate atoms `cand`, the wrapped fractional
    coordinates `fw` and their integer parts `wrap`, and `cell_overflow` (some cell held more
    than M atoms: pairs may have been lost, the caller must reallocate).
    """
    n = positions.shape[0]
    m = cell_capacity
    n_cells = cells[0] * cells[1] * cells[2]
    inv = jnp.linalg.inv(box)
    frac = positions @ inv
    wrap = jnp.floor(frac)
    fw = frac - wrap
    c3 = _cell_coords(fw, cells)
    cid = jnp.where(atom_mask, _cell_id(c3, cells), n_cells)  # masked atoms go to a spare bin
    order = jnp.argsort(cid, stable=True)
    sorted_c = cid[order]
    counts = jnp.bincount(cid, length=n_cells + 1)
    start = jnp.cumsum(counts) - counts
    rank = jnp.arange(n) - start[sorted_c]
    table = jnp.full((n_cells + 1, m), n, jnp.int32).at[sorted_c, rank].set(order.astype(jnp.int32), mode="drop")
    cell_overflow = jnp.any(counts[:n_cells] > m)
    stencil = _stencil(reach)
    nbr_c3 = (c3[:, None, :] + jnp.asarray(stencil)[None]) % jnp.asarray(cells, jnp.int32)  # (N, S, 3)
    cand = table[_cell_id(nbr_c3, cells)].reshape(n, len(stencil) * m)  # n_c >= 2k+1: distinct cells
    real = cand < n
    j = jnp.where(real, cand, 0)
    ds = fw[j] - fw[:, None, :]
    d = (ds - jnp.round(ds)) @ box  # (N, S·M, 3), minimum image as in the dense path
    r2 = jnp.sum(d * d, axis=-1)
    i_idx = jnp.arange(n)
    ok = real & (r2 < cutoff * cutoff) & (j != i_idx[:, None]) & atom_mask[:, None] & atom_mask[j]
    return ok, j, fw, wrap, cell_overflow


def _build_cells(positions, box, cutoff, capacity, atom_mask, cells, cell_capacity, reach=1):
    ok, cand, fw, wrap, cell_overflow = _cell_candidates(positions, box, cutoff, atom_mask, cells, cell_capacity,
                                                          reach)
    n, width = ok.shape
    flat = ok.reshape(-1)
    count = jnp.sum(flat, dtype=jnp.int32)
    (idx,) = jnp.nonzero(flat, size=capacity, fill_value=0)  # row-major: sorted by sender
    valid = jnp.arange(capacity) < count
    i = idx // width
    s = idx % width
    j = cand[i, s]
    img = -jnp.round(fw[j] - fw[i])  # recomputed for the kept pairs only: same values as in the search
    shifts = img - wrap[j] + wrap[i]
    i = jnp.where(valid, i, 0).astype(jnp.int32)
    j = jnp.where(valid, j, 0).astype(jnp.int32)
    shifts = jnp.where(valid[:, None], shifts, 0.0)
    return i, j, shifts, valid, count, cell_overflow


@functools.partial(jax.jit, static_argnums=(4, 5, 6))
def _count_cells_jit(positions, box, cutoff, atom_mask, cells, cell_capacity, reach):
    ok, _, _, _, cell_overflow = _cell_candidates(positions, box, cutoff, atom_mask, cells, cell_capacity, reach)
    return jnp.sum(ok, dtype=jnp.int32), cell_overflow


_build_cells_jit = jax.jit(_build_cells, static_argnums=(3, 5, 6, 7))


def _build(positions, box, images, cutoff, capacity, atom_mask, minimum_image=False):
    ok, wrap, images_ij = _candidate_pairs(positions, box, images, cutoff, atom_mask, minimum_image)
    n, _, n_img = ok.shape
    flat = ok.reshape(-1)
    count = jnp.sum(flat, dtype=jnp.int32)
    (idx,) = jnp.nonzero(flat, size=capacity, fill_value=0)
    valid = jnp.arange(capacity) < count
    i = idx // (n * n_img)
    j = (idx // n_img) % n
    k = idx % n_img
    # shift in terms of the *unwrapped* positions: r_j + n·box with r wrapped = r - wrap·box
    img = images_ij[i, j, 0] if minimum_image else images[k]
    shifts = img - wrap[j] + wrap[i]
    i = jnp.where(valid, i, 0).astype(jnp.int32)
    j = jnp.where(valid, j, 0).astype(jnp.int32)
    shifts = jnp.where(valid[:, None], shifts, 0.0)
    return i, j, shifts, valid, count


@functools.partial(jax.jit, static_argnums=(5,))
def _count_jit(positions, box, images, cutoff, atom_mask, minimum_image):
    return jnp.sum(_candidate_pairs(positions, box, images, cutoff, atom_mask, minimum_image)[0], dtype=jnp.int32)


_build_jit = jax.jit(lambda *a: _build(*a), static_argnums=(4, 6))


def bucket_capacity(n: int) -> int:
    """Round a capacity up to the next of a geometric ladder (×2^(1/4)), multiple of 16, so that
    small changes in pair counts reuse the same compiled functions instead of recompiling."""
    k = math.ceil(4 * math.log2(max(n, 16)))
    return int(16 * math.ceil(2 ** (k / 4) / 16))


CELL_LIST_MIN_ATOMS = 512


def choose_cells(box, r_max: float, n_atoms: int, max_reach: int = 3) -> tuple[tuple, int, float] | None:
    """(cells per axis, reach k, expected candidates per atom) for the cell-list search, or None
    when it does not apply.

    For reach k each axis gets n_c = floor(k · perpendicular width / r_max) cells (a cell is at
    least r_max / k wide, neighbors lie within k cells); it needs n_c >= 2k+1 on every axis (the
    (2k+1)³ stencil cells are then distinct).  The number of cells is capped at about one per atom
    (largest n_c reduced first).  Among k = 1..max_reach the one with the fewest expected candidates
    per atom, (2k+1)³ · M (`_cell_capacity`), is chosen.
    """
    widths = _perpendicular_widths(np.asarray(box, dtype=np.float64))
    best = None
    for k in range(1, max_reach + 1):
        n_c = np.floor(k * widths / r_max).astype(int)
        if np.any(n_c < 2 * k + 1):
            break
        while np.prod(n_c) > max(n_atoms, (2 * k + 1) ** 3) and np.max(n_c) > 2 * k + 1:
            n_c[np.argmax(n_c)] -= 1
        cost = (2 * k + 1) ** 3 * _cell_capacity(0, n_atoms / np.prod(n_c), 1.3)
        if best is None or cost < best[0]:
            best = (cost, tuple(int(c) for c in n_c), k)
    return None if best is None else best[1:] + (best[0],)


def _cell_capacity(max_occupancy: int, mean: float, capacity_factor: float) -> int:
    """Atoms per cell: the allocating configuration's fullest cell × margin, and at least a 5σ
    Poisson fluctuation above the mean (a crystal's uniform cells would otherwise leave no room for
    the fluctuations of the liquid it melts into), rounded up to a multiple of 4."""
    m = max(math.ceil(max_occupancy * max(capacity_factor, 1.3)) + 1, math.ceil(mean + 5 * math.sqrt(mean) + 3))
    return 4 * math.ceil(m / 4)


def _max_cell_occupancy(positions, box, atom_mask, cells) -> int:
    frac = np.asarray(positions, np.float64) @ np.linalg.inv(np.asarray(box, np.float64))
    fw = frac - np.floor(frac)
    c3 = np.clip(np.floor(fw * np.asarray(cells)).astype(int), 0, np.asarray(cells) - 1)
    cid = (c3[:, 0] * cells[1] + c3[:, 1]) * cells[2] + c3[:, 2]
    cid = cid[np.asarray(atom_mask, bool)]
    return int(np.bincount(cid, minlength=1).max()) if cid.size else 0


def allocate(positions, box, cutoff: float, skin: float = 0.5, capacity_factor: float = 1.3,
             atom_mask=None, min_capacity: int = 16, cell_list: bool | None = None) -> NeighborList:
    """Host-side: count pairs, choose a capacity and build the list.

    `cell_list`: None (default) uses the O(N) cell-list search (`choose_cells`) when minimum image
    applies, the box holds >= 3 cells of width >= cutoff + skin per axis, N >= CELL_LIST_MIN_ATOMS
    and the cells scan fewer than N candidates per atom; otherwise the dense O(N²) search.  True forces it (ValueError if it cannot apply), False forbids it.
    Both give the same pairs; both list pairs sorted by sender (dense: then by receiver).
    """
    positions = jnp.asarray(positions)
    box = jnp.asarray(box, dtype=positions.dtype)
    if not np.all(np.isfinite(np.asarray(positions))):
        raise FloatingPointError("neighbor list: positions contain NaN or inf")
    r = cutoff + skin
    mi = minimum_image_ok(np.asarray(box), r)
    images = jnp.zeros((1, 3), positions.dtype) if mi else jnp.asarray(image_offsets(np.asarray(box), r), dtype=positions.dtype)
    atom_mask = jnp.ones(positions.shape[0], bool) if atom_mask is None else jnp.asarray(atom_mask, bool)
    choice = choose_cells(np.asarray(box), r, positions.shape[0]) if mi and cell_list is not False else None
    if cell_list is None and (positions.shape[0] < CELL_LIST_MIN_ATOMS or
                              (choice is not None and choice[2] >= positions.shape[0])):
        choice = None  # small system, or a cutoff so large that the cells scan more than N candidates
    if cell_list and choice is None:
        raise ValueError("cell_list=True needs minimum image and >= 3 cells of width >= cutoff + skin per axis")
    if choice is None:
        count = int(_count_jit(positions, box, images, r, atom_mask, mi))
        capacity = bucket_capacity(max(min_capacity, int(math.ceil(count * capacity_factor))))
        i, j, shifts, valid, cnt = _build_jit(positions, box, images, r, capacity, atom_mask, mi)
        return NeighborList(i, j, shifts, valid, positions, box, jnp.asarray(False), cnt, images, cutoff, skin, mi)
    cells, reach, _ = choice
    occ = _max_cell_occupancy(positions, box, atom_mask, cells)
    m = _cell_capacity(occ, float(np.sum(np.asarray(atom_mask))) / math.prod(cells), capacity_factor)
    while True:  # host/device rounding may bin an atom differently: grow M until nothing is lost
        count, cell_ovf = _count_cells_jit(positions, box, r, atom_mask, cells, m, reach)
        if not bool(cell_ovf):
            break
        m = 4 * math.ceil(1.5 * m / 4)
    capacity = bucket_capacity(max(min_capacity, int(math.ceil(int(count) * capacity_factor))))
    i, j, shifts, valid, cnt, _ = _build_cells_jit(positions, box, r, capacity, atom_mask, cells, m, reach)
    return NeighborList(i, j, shifts, valid, positions, box, jnp.asarray(False), cnt, images, cutoff, skin, mi,
                        cells, m, reach)


def update(nbrs: NeighborList, positions, box=None, atom_mask=None, force: bool | jnp.ndarray = False) -> NeighborList:
    """Jit-compatible rebuild when any atom moved more than skin/2 (or the box changed).

    Keeps the capacity; sets `overflow` (sticky) if the new pair count does not fit, if a cell of
    the cell-list search holds more atoms than its capacity, or if the box no longer fits the
    image set / cell grid chosen at allocation.
    """
    box = nbrs.reference_box if box is None else box
    atom_mask = jnp.ones(positions.shape[0], bool) if atom_mask is None else atom_mask
    moved = jnp.sqrt(jnp.max(jnp.sum((positions - nbrs.reference_positions) ** 2, axis=-1)))
    # a box change moves image j by up to |n|·|Δbox|; bound it by the largest image offset + 1
    reach = jnp.max(jnp.abs(nbrs.images)) + 1.0
    box_moved = reach * jnp.sqrt(jnp.sum((box - nbrs.reference_box) ** 2))
    need = force | (moved + box_moved > 0.5 * nbrs.skin)

    def rebuild(_):
        r = nbrs.cutoff + nbrs.skin
        if nbrs.cells is None:
            i, j, shifts, valid, cnt = _build(positions, box, nbrs.images, r, nbrs.capacity, atom_mask,
                                              nbrs.minimum_image)
            ovf = cnt > nbrs.capacity
        else:
            i, j, shifts, valid, cnt, cell_ovf = _build_cells(positions, box, r, nbrs.capacity, atom_mask,
                                                              nbrs.cells, nbrs.cell_capacity, nbrs.cell_reach)
            ovf = (cnt > nbrs.capacity) | cell_ovf
        return NeighborList(i, j, shifts, valid, positions, box, nbrs.overflow | ovf, cnt,
                            nbrs.images, nbrs.cutoff, nbrs.skin, nbrs.minimum_image, nbrs.cells, nbrs.cell_capacity,
                            nbrs.cell_reach)

    out = jax.lax.cond(need, rebuild, lambda _: nbrs, None)
    # the image set (or minimum-image mode) chosen at allocation must still cover cutoff + skin
    # in the current box; if the box shrank or sheared past that, flag it so the caller reallocates
    return eqx.tree_at(lambda n: n.overflow, out, out.overflow | ~_images_cover(nbrs, box))


def _images_cover(nbrs: NeighborList, box):
    vol = jnp.abs(jnp.linalg.det(box))
    a, b, c = box[0], box[1], box[2]
    widths = vol / jnp.stack([jnp.linalg.norm(jnp.cross(b, c)), jnp.linalg.norm(jnp.cross(c, a)),
                              jnp.linalg.norm(jnp.cross(a, b))])
    r = nbrs.cutoff + nbrs.skin
    if nbrs.minimum_image:
        ok = jnp.all(widths > 2 * r)
        if nbrs.cells is not None:  # every cell must still be at least r / k wide
            ok = ok & jnp.all(nbrs.cell_reach * widths >= r * jnp.asarray(nbrs.cells, widths.dtype))
        return ok
    return jnp.all(jnp.ceil(r / widths) <= jnp.max(jnp.abs(nbrs.images), axis=0))


def check(nbrs: NeighborList, where: str = "") -> None:
    """Host-side check: raise if the list overflowed (callers usually reallocate instead)."""
    if bool(nbrs.overflow):
        raise OverflowError(f"neighbor list overflow{(' in ' + where) if where else ''}: "
                            f"{int(nbrs.count)} pairs for capacity {nbrs.capacity}")
