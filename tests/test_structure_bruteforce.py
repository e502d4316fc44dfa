"""Independent brute-force NumPy references for the structure tests (all pairs, explicit images),
and checks of the references themselves."""
import itertools

import numpy as np

IMAGES = np.array(list(itertools.product((-1, 0, 1), repeat=3)), dtype=np.float64)


def min_image_vectors(positions, box):
    """(N, N, 3) minimum-image vectors r_j − r_i, searched over the 27 neighbouring images."""
    pos, box = np.asarray(positions, np.float64), np.asarray(box, np.float64)
    frac = pos @ np.linalg.inv(box)
    frac -= np.floor(frac)
    d = (frac[None, :, :] - frac[:, None, :])[:, :, None, :] + IMAGES[None, None]  # (N, N, 27, 3)
    d = d @ box
    r = np.linalg.norm(d, axis=-1)
    k = np.argmin(r, axis=-1)
    return np.take_along_axis(d, k[:, :, None, None], axis=2)[:, :, 0, :]


def rdf_brute(positions, box, edges, species=None, pair=None):
    d = min_image_vectors(positions, box)
    r = np.linalg.norm(d, axis=-1)
    n = r.shape[0]
    sel = ~np.eye(n, dtype=bool)
    n_a = n_b = n
    if pair is not None:
        sa, sb = np.asarray(species) == pair[0], np.asarray(species) == pair[1]
        sel &= sa[:, None] & sb[None, :]
        n_a, n_b = sa.sum(), sb.sum()
    h, _ = np.histogram(r[sel], bins=edges)
    vol = abs(np.linalg.det(box))
    shells = 4 * np.pi / 3 * (edges[1:] ** 3 - edges[:-1] ** 3)
    return h / (n_a * (n_b / vol) * shells)


def angles_brute(positions, box, cutoff):
    """All bond angles (degrees) j–i–k with j<k both within cutoff of i (minimum image)."""
    d = min_image_vectors(positions, box)
    r = np.linalg.norm(d, axis=-1)
    out = []
    for i in range(r.shape[0]):
        nb = np.flatnonzero((r[i] < cutoff) & (np.arange(r.shape[0]) != i))
        v = d[i, nb] / r[i, nb, None]
        c = np.clip(v @ v.T, -1.0, 1.0)
        iu = np.triu_indices(len(nb), 1)
        out.append(np.degrees(np.arccos(c[iu])))
    return np.concatenate(out)


def test_min_image_vectors_are_shortest_images():
    rng = np.random.default_rng(0)
    box = np.array([[5.0, 0, 0], [2.0, 5.0, 0], [1.0, -1.5, 6.0]])
    pos = rng.uniform(-3, 8, (7, 3))
    d = min_image_vectors(pos, box)
    frac = pos @ np.linalg.inv(box)
    pos = (frac - np.floor(frac)) @ box  # wrapped, so that ±2 images cover every nearest image
    # compare with a wider explicit search (5^3 images)
    wide = np.array(list(itertools.product(range(-2, 3), repeat=3)), dtype=np.float64) @ box
    for i in range(7):
        for j in range(7):
            cand = pos[j] - pos[i] + wide
            assert np.isclose(np.linalg.norm(d[i, j]), np.linalg.norm(cand, axis=1).min())
