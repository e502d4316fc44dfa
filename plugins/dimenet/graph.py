"""Directed graph and triplets for DimeNet++ in a per-atom padded layout (jit-compatible).

Edge e = (i, j) from the fusepot neighbor list (i = `senders`, j = `receivers`) carries the
message m_ji from neighbor j to centre i; its vector is d_e = r_j − r_i + n·box.  Only pairs
with r < cutoff are active (the list also holds pairs out to cutoff + skin).

Layout.  Active edges are compacted into an edge list of static size E_cap, sorted by
(centre, neighbor, image shift); per-edge work (dense layers, bases) runs on that list.  For the
triplets, slot (j, q) of an (N, K) array is the q-th edge of centre j (a contiguous range of the
sorted list).

Reverse edges.  The neighbor list is full and exactly symmetric: with (i, j, n) it holds
(j, i, −n), whose vector is exactly −d_e (negation is exact in floating point), so both are
active or neither is.  Sorting the compact edges once more by (neighbor, centre, −shift) lists
their reverses in compact order: that permutation is `rev`.  The edges entering atom j are the
reverses of j's out slots, in the same order, so one (N, K) layout serves both ends of a
triplet: in slot (j, p) is edge rev(out_edge[j, p]), and its back edge (j → i, same image) is
out slot (j, p) itself.

Triplets.  DimeNet aggregates into edge ji the messages of the edges kj (centre j, k ≠ the
image of i): all pairs (p, q) of j's slots except q = p.  The model never forms the N·K²
triplet block: P_l(u_p·u_q) factorises into per-edge harmonic features of the unit vectors
(addition theorem), so the sum over q is a per-atom moment (linear in K) and the back edge
(q = p, angle exactly 180°) is subtracted explicitly (see `model.triplet_aggregate`).  No N×N
array is formed either.

Capacity.  E_cap and K (max edges per atom within the cutoff) are static.  When the active
edges exceed E_cap or an atom has more than K, `DimeNetPP.overflow` is True: edges or triplets
would not fit and the caller must grow (`DimeNetPP.grow`).  Nothing is dropped silently.  An
edge without its reverse (impossible for a full list built by `core.neighbors`) makes
`paired` False and the model's energy NaN rather than a silently wrong number.
"""
from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from fusepot.core.neighbors import NeighborList
from fusepot.core.system import Configuration

# image shifts enter the sort key as integers in [-_SHIFT_BOUND, _SHIFT_BOUND] (a cell would
# need a 1/512-cutoff width to exceed it; a clipped shift breaks the pairing check, never silently)
_SHIFT_BOUND = 512


class Graph(eqx.Module):
    # compact edge list (E_cap,), sorted by (centre, neighbor, shift); rows >= n_edges are padding
    d: jnp.ndarray  # (E, 3) r_j − r_i + n·box (zeros where invalid)
    valid: jnp.ndarray  # (E,) bool
    centre: jnp.ndarray  # (E,) int32 atom i (aggregation target of the message m_ji)
    neighbor: jnp.ndarray  # (E,) int32 atom j
    in_position: jnp.ndarray  # (E,) int32: flat slot j*K + p of the reverse edge (where e's triplets are summed)
    # per-atom padded layout (N, K): slot (j, q) = q-th edge of centre j (edge j -> k)
    out_edge: jnp.ndarray  # (N, K) int32 compact edge index of slot (j, q)
    valid_out: jnp.ndarray  # (N, K) bool
    n_edges: jnp.ndarray  # () int32 active edges (overflow when > E_cap)
    max_degree: jnp.ndarray  # () int32 largest in/out degree (overflow when > K)
    paired: jnp.ndarray  # () bool: every active edge has its reverse (see module docstring)


def active_edges(conf: Configuration, nbrs: NeighborList, cutoff: float):
    """Edge vectors (E_nbr, 3) and mask of pairs inside the cutoff between real atoms."""
    d = nbrs.vectors(conf.positions, conf.box)
    r2 = jnp.sum(d * d, axis=-1)
    active = nbrs.mask & (r2 < cutoff * cutoff) & conf.mask[nbrs.senders] & conf.mask[nbrs.receivers]
    return d, active


def degrees(centre, active, n_atoms: int):
    return jax.ops.segment_sum(active.astype(jnp.int32), centre, n_atoms)


def _shift_code(shifts):
    """One int32 per integer image shift (…, 3), order-preserving per component."""
    s = jnp.clip(jnp.round(shifts), -_SHIFT_BOUND, _SHIFT_BOUND).astype(jnp.int32) + _SHIFT_BOUND
    w = 2 * _SHIFT_BOUND + 1
    return (s[..., 0] * w + s[..., 1]) * w + s[..., 2]


def _sort_keys(first, second, code, valid, n_atoms: int):
    """Sort keys (invalid entries last) for the order (first, second, code), as few int32 as fit."""
    if n_atoms * n_atoms < 2**31 - n_atoms:
        return (jnp.where(valid, first * n_atoms + second, n_atoms * n_atoms), code)
    return (jnp.where(valid, first, n_atoms), second, code)


def _sorted_order(keys):
    iota = jnp.arange(keys[0].shape[0], dtype=jnp.int32)
    out = jax.lax.sort((*keys, iota), num_keys=len(keys), is_stable=True)
    return out[-1], out[:-1]


def build_graph(conf: Configuration, nbrs: NeighborList, cutoff: float, k: int, e_cap: int) -> Graph:
    n = conf.positions.shape[0]
    d_all, active = active_edges(conf, nbrs, cutoff)
    senders, receivers = nbrs.senders.astype(jnp.int32), nbrs.receivers.astype(jnp.int32)
    # compact: the active entries of the list (in list order, at most e_cap of them) ...
    deg_out = degrees(senders, active, n)
    n_edges = jnp.sum(deg_out)
    dest = jnp.where(active, jnp.cumsum(active) - 1, e_cap)
    picked = jnp.zeros(e_cap, jnp.int32).at[dest].set(jnp.arange(active.shape[0], dtype=jnp.int32), mode="drop")
    idx = jnp.arange(e_cap, dtype=jnp.int32)
    valid = idx < n_edges
    # ... sorted by (centre i = sender, neighbor, shift)
    code_p = _shift_code(nbrs.shifts[picked])
    order, keys = _sorted_order(_sort_keys(senders[picked], receivers[picked], code_p, valid, n))
    sel = picked[order]
    start_out = jnp.cumsum(deg_out) - deg_out  # exclusive prefix sum: first compact position of each centre
    # padding rows get centre N-1 so that `centre` stays sorted (segment sums rely on it)
    centre = jnp.where(valid, senders[sel], n - 1)
    neighbor = jnp.where(valid, receivers[sel], n - 1)
    shifts = nbrs.shifts[sel]
    # d from nbrs.vectors (never from positions directly): strain methods may deform it there
    d = jnp.where(valid[:, None], d_all[sel], 0.0)
    # reverse edges: the compact edges sorted by (neighbor, centre, −shift) are their reverses in
    # compact order, so those sorted keys must equal the compact ones (else some edge is unpaired)
    rev, rev_keys = _sorted_order(_sort_keys(neighbor, centre, _shift_code(-shifts), valid, n))
    paired = jnp.all(jnp.stack([(a == b) | ~valid for a, b in zip(keys, rev_keys)]))
    # out slots: slot (j, q) is compact edge start_j + q
    q = jnp.arange(k, dtype=jnp.int32)
    out_edge = jnp.minimum(start_out[:, None] + q[None, :], e_cap - 1)
    valid_out = (q[None, :] < jnp.minimum(deg_out, k)[:, None]) & (start_out[:, None] + q[None, :] < e_cap)
    # edge e's triplets are summed in the slot of its reverse (j -> i) at atom j = neighbor(e)
    rank = idx - start_out[centre]
    slot = centre * k + jnp.minimum(rank, k - 1)
    in_position = jnp.where(valid, slot[rev], 0)
    deg_in = degrees(receivers, active, n)
    max_degree = jnp.maximum(jnp.max(deg_out), jnp.max(deg_in))
    # with overflowing capacities some reverses are cut off: that is reported as overflow
    paired = paired | (n_edges > e_cap) | (max_degree > k)
    return Graph(d, valid, centre, neighbor, in_position.astype(jnp.int32), out_edge.astype(jnp.int32), valid_out,
                 n_edges.astype(jnp.int32), max_degree.astype(jnp.int32), paired)


def _volume_ratio(nbrs: NeighborList, cutoff: float) -> float:
    return min(1.0, (cutoff / (nbrs.cutoff + nbrs.skin)) ** 3)


def default_max_neighbors(nbrs: NeighborList, n_atoms: int, cutoff: float) -> int:
    """K derived deterministically from the neighbor list when the model has none fixed.

    nbrs.capacity / N is the mean neighbor count within cutoff + skin (times the list's
    capacity factor); the volume ratio estimates the count within the cutoff.  Generous for
    solids; `DimeNetPP.sized_for` / `grow` give a tight K.
    """
    return int(math.ceil(nbrs.capacity / max(n_atoms, 1) * _volume_ratio(nbrs, cutoff) * 1.2)) + 2


def default_edge_capacity(nbrs: NeighborList, cutoff: float) -> int:
    """E_cap derived from the neighbor list (same estimate as K, never above the list capacity)."""
    return min(nbrs.capacity, int(math.ceil(nbrs.capacity * _volume_ratio(nbrs, cutoff) * 1.2)) + 16)


def host_counts(conf: Configuration, nbrs: NeighborList, cutoff: float) -> tuple[int, int]:
    """(active edges, largest in/out degree) within the cutoff, computed on the host (sizing)."""
    _, active = active_edges(conf, nbrs, cutoff)
    act = np.asarray(active)
    n = conf.positions.shape[0]
    if not act.any():
        return 0, 0
    out = np.bincount(np.asarray(nbrs.senders)[act], minlength=n)
    inn = np.bincount(np.asarray(nbrs.receivers)[act], minlength=n)
    return int(act.sum()), int(max(out.max(), inn.max()))
