"""Directed graph and triplets for DimeNet++ in a per-atom padded layout (jit-compatible).

Edge e = (i, j) from the fusepot neighbor list (i = `senders`, j = `receivers`) carries the
message m_ji from neighbor j to centre i; its vector is d_e = r_j − r_i + n·box.  Only pairs
with r < cutoff are active (the list also holds pairs out to cutoff + skin).

Layout.  Active edges are compacted into an edge list of static size E_cap, sorted by centre
(stable argsort + cumsum offsets); per-edge work (dense layers, bases) runs on that list.
For the triplets, slot (j, q) of an (N, K) array is the q-th edge of centre j (a contiguous
range of the sorted list), and a second sort by neighbor gives, for every atom j, its K
incoming edges (i -> j).

Triplets.  DimeNet aggregates into edge ji the messages of the edges kj (centre j, k ≠ the
image of i).  For atom j these are all pairs (p, q) of (incoming edge p, outgoing slot q)
except the back edge, whose out slot is recorded per in slot (`back_edge`, `has_back`).  The
model never forms the N·K² triplet block: P_l(u_p·u_q) factorises into per-edge harmonic
features of the unit vectors (addition theorem), so the sum over q is a per-atom moment
(linear in K) and the back edge is subtracted explicitly (see `model.triplet_aggregate`).  No N×N array
is formed either.

Capacity.  E_cap and K (max edges per atom within the cutoff, in and out) are static.  When
the active edges exceed E_cap or an atom has more than K, `DimeNetPP.overflow` is True: edges
or triplets would not fit and the caller must grow (`DimeNetPP.grow`).  Nothing is dropped
silently.
"""
from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from fusepot.core.neighbors import NeighborList
from fusepot.core.system import Configuration


class Graph(eqx.Module):
    # compact edge list (E_cap,), sorted by centre; rows >= n_edges are padding
    d: jnp.ndarray  # (E, 3) r_j − r_i + n·box (zeros where invalid)
    valid: jnp.ndarray  # (E,) bool
    centre: jnp.ndarray  # (E,) int32 atom i (aggregation target of the message m_ji)
    neighbor: jnp.ndarray  # (E,) int32 atom j
    in_position: jnp.ndarray  # (E,) int32: flat index j*K + p of the edge in j's incoming list
    # per-atom padded layout (N, K): out slots (centre j, edges kj) and in slots (edges ji into j)
    out_edge: jnp.ndarray  # (N, K) int32 compact edge index of slot (j, q)
    valid_out: jnp.ndarray  # (N, K) bool
    in_edge: jnp.ndarray  # (N, K) int32 compact edge index of the p-th edge entering j
    valid_in: jnp.ndarray  # (N, K) bool
    back_edge: jnp.ndarray  # (N, K) int32 compact index of the back edge (j -> i, same image) of in slot (j, p)
    has_back: jnp.ndarray  # (N, K) bool: that back edge sits in one of j's out slots
    n_edges: jnp.ndarray  # () int32 active edges (overflow when > E_cap)
    max_degree: jnp.ndarray  # () int32 largest in/out degree (overflow when > K)


def active_edges(conf: Configuration, nbrs: NeighborList, cutoff: float):
    """Edge vectors (E_nbr, 3) and mask of pairs inside the cutoff between real atoms."""
    d = nbrs.vectors(conf.positions, conf.box)
    r2 = jnp.sum(d * d, axis=-1)
    active = nbrs.mask & (r2 < cutoff * cutoff) & conf.mask[nbrs.senders] & conf.mask[nbrs.receivers]
    return d, active


def degrees(centre, active, n_atoms: int):
    return jax.ops.segment_sum(active.astype(jnp.int32), centre, n_atoms)


def _sort_by(centre, valid, n_atoms: int):
    """Stable sort of the valid entries by centre: (order, degree, start offset, rank of each entry)."""
    m = centre.shape[0]
    key = jnp.where(valid, centre, n_atoms)
    order = jnp.argsort(key, stable=True).astype(jnp.int32)
    deg = degrees(centre, valid, n_atoms)
    start = jnp.cumsum(deg) - deg  # exclusive prefix sum: first sorted position of each centre
    sorted_rank = jnp.arange(m, dtype=jnp.int32) - start[jnp.minimum(key[order], n_atoms - 1)]
    rank = jnp.zeros(m, jnp.int32).at[order].set(sorted_rank)  # a permutation: no collisions
    return order, deg, start, rank


def _padded(order, deg, start, n_items: int, k: int):
    """(N, K) indices into the sorted entries: slot (a, q) = q-th entry of centre a."""
    q = jnp.arange(k, dtype=jnp.int32)
    pos = jnp.minimum(start[:, None] + q[None, :], n_items - 1)
    return order[pos], q[None, :] < deg[:, None]


def build_graph(conf: Configuration, nbrs: NeighborList, cutoff: float, k: int, e_cap: int) -> Graph:
    n = conf.positions.shape[0]
    d_all, active = active_edges(conf, nbrs, cutoff)
    # compact: active edges first, sorted by centre (i = sender)
    order, deg_out, start_out, _ = _sort_by(nbrs.senders, active, n)
    n_edges = jnp.sum(deg_out)
    sel = order[:e_cap] if e_cap <= order.shape[0] else jnp.pad(order, (0, e_cap - order.shape[0]))
    valid = jnp.arange(e_cap) < n_edges
    d = jnp.where(valid[:, None], d_all[sel], 0.0)
    # padding rows get centre N-1 so that `centre` stays sorted (segment sums rely on it)
    centre = jnp.where(valid, nbrs.senders[sel], n - 1)
    neighbor, shifts = nbrs.receivers[sel], nbrs.shifts[sel]
    # out slots: compact edges are already grouped by centre, so slot (j, q) is edge start_j + q
    q = jnp.arange(k, dtype=jnp.int32)
    out_edge = jnp.minimum(start_out[:, None] + q[None, :], e_cap - 1)
    valid_out = q[None, :] < jnp.minimum(deg_out, k)[:, None]
    valid_out = valid_out & (start_out[:, None] + q[None, :] < e_cap)
    # in slots: sort the compact edges by neighbor j
    order_in, deg_in, start_in, rank_in = _sort_by(neighbor, valid, n)
    in_edge, valid_in = _padded(order_in, deg_in, start_in, e_cap, k)
    in_position = (neighbor * k + jnp.minimum(rank_in, k - 1)).astype(jnp.int32)
    # back edge of in slot p at atom j: the out slot q with k = i whose image shift cancels
    # (k is the very image of i that the message goes to); integer work, done once per energy
    same_atom = centre[in_edge][:, :, None] == neighbor[out_edge][:, None, :]
    same_image = jnp.all(shifts[in_edge][:, :, None, :] + shifts[out_edge][:, None, :, :] == 0, axis=-1)
    back = same_atom & same_image & valid_in[:, :, None] & valid_out[:, None, :]
    back_slot = jnp.argmax(back, axis=-1).astype(jnp.int32)
    back_edge = jnp.take_along_axis(out_edge, back_slot, axis=1)
    max_degree = jnp.maximum(jnp.max(deg_out), jnp.max(deg_in))
    return Graph(d, valid, centre, neighbor, in_position, out_edge.astype(jnp.int32), valid_out,
                 in_edge.astype(jnp.int32), valid_in, back_edge.astype(jnp.int32), jnp.any(back, axis=-1),
                 n_edges.astype(jnp.int32), max_degree.astype(jnp.int32))


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
