"""Periodic neighbor lists with explicit image shifts and fixed capacity.

A pair (i, j, n) means atom j seen from atom i through the periodic image with integer cell
offset n: r_ij = r_j - r_i + n @ box.  Keeping the integer shifts (instead of a minimum-image
rounding inside the energy) makes energies smooth in positions *and* in the box, so the strain
derivative (virial, Born terms) is exact, and small cells (cutoff larger than half the cell)
are handled by listing several images.

Following jax-md's split: `allocate` runs on the host (numpy, may choose shapes), `update`
is jit-compatible and keeps shapes; it sets `overflow` when more pairs exist than fit.  The
caller must check `overflow` and reallocate; fusepot's ensembles and trainers do.
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


def allocate(positions, box, cutoff: float, skin: float = 0.5, capacity_factor: float = 1.3,
             atom_mask=None, min_capacity: int = 16) -> NeighborList:
    """Host-side: count pairs, choose a capacity and build the list."""
    positions = jnp.asarray(positions)
    box = jnp.asarray(box, dtype=positions.dtype)
    if not np.all(np.isfinite(np.asarray(positions))):
        raise FloatingPointError("neighbor list: positions contain NaN or inf")
    r = cutoff + skin
    mi = minimum_image_ok(np.asarray(box), r)
    images = jnp.zeros((1, 3), positions.dtype) if mi else jnp.asarray(image_offsets(np.asarray(box), r), dtype=positions.dtype)
    atom_mask = jnp.ones(positions.shape[0], bool) if atom_mask is None else jnp.asarray(atom_mask, bool)
    count = int(_count_jit(positions, box, images, r, atom_mask, mi))
    capacity = bucket_capacity(max(min_capacity, int(math.ceil(count * capacity_factor))))
    i, j, shifts, valid, cnt = _build_jit(positions, box, images, r, capacity, atom_mask, mi)
    return NeighborList(i, j, shifts, valid, positions, box, jnp.asarray(False), cnt, images, cutoff, skin, mi)


def update(nbrs: NeighborList, positions, box=None, atom_mask=None, force: bool | jnp.ndarray = False) -> NeighborList:
    """Jit-compatible rebuild when any atom moved more than skin/2 (or the box changed).

    Keeps the capacity; sets `overflow` (sticky) if the new pair count does not fit.
    """
    box = nbrs.reference_box if box is None else box
    atom_mask = jnp.ones(positions.shape[0], bool) if atom_mask is None else atom_mask
    moved = jnp.sqrt(jnp.max(jnp.sum((positions - nbrs.reference_positions) ** 2, axis=-1)))
    # a box change moves image j by up to |n|·|Δbox|; bound it by the largest image offset + 1
    reach = jnp.max(jnp.abs(nbrs.images)) + 1.0
    box_moved = reach * jnp.sqrt(jnp.sum((box - nbrs.reference_box) ** 2))
    need = force | (moved + box_moved > 0.5 * nbrs.skin)

    def rebuild(_):
        i, j, shifts, valid, cnt = _build(positions, box, nbrs.images, nbrs.cutoff + nbrs.skin, nbrs.capacity, atom_mask,
                                          nbrs.minimum_image)
        return NeighborList(i, j, shifts, valid, positions, box, nbrs.overflow | (cnt > nbrs.capacity), cnt,
                            nbrs.images, nbrs.cutoff, nbrs.skin, nbrs.minimum_image)

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
        return jnp.all(widths > 2 * r)
    return jnp.all(jnp.ceil(r / widths) <= jnp.max(jnp.abs(nbrs.images), axis=0))


def check(nbrs: NeighborList, where: str = "") -> None:
    """Host-side check: raise if the list overflowed (callers usually reallocate instead)."""
    if bool(nbrs.overflow):
        raise OverflowError(f"neighbor list overflow{(' in ' + where) if where else ''}: "
                            f"{int(nbrs.count)} pairs for capacity {nbrs.capacity}")
