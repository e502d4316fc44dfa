"""Voigt notation for strain, stress and elastic tensors, and Voigt-average moduli.

Convention (Nye): index pairs 11→1, 22→2, 33→3, 23→4, 13→5, 12→6.  Stress in Voigt form is
(σ11, σ22, σ33, σ23, σ13, σ12); strain is *engineering* strain (e1, e2, e3, 2ε23, 2ε13, 2ε12),
so that σ_I = C_IJ e_J and C_44 = C_2323 with no factors.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

#: (i, j) Cartesian indices of each Voigt index
VOIGT_PAIRS = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


def strain_from_voigt(e):
    """Symmetric 3×3 strain from the 6 engineering-Voigt components (shears halved)."""
    e = jnp.asarray(e)
    return jnp.array([[e[0], 0.5 * e[5], 0.5 * e[4]],
                      [0.5 * e[5], e[1], 0.5 * e[3]],
                      [0.5 * e[4], 0.5 * e[3], e[2]]])


def tensor_to_voigt(t):
    """(…, 3, 3) symmetric stress-like tensor → (…, 6) Voigt vector (no factors of 2)."""
    t = jnp.asarray(t)
    return jnp.stack([t[..., i, j] for i, j in VOIGT_PAIRS], axis=-1)


def voigt_to_tensor(v):
    """(…, 6) Voigt stress → (…, 3, 3) symmetric tensor."""
    v = jnp.asarray(v)
    rows = [[v[..., 0], v[..., 5], v[..., 4]],
            [v[..., 5], v[..., 1], v[..., 3]],
            [v[..., 4], v[..., 3], v[..., 2]]]
    return jnp.stack([jnp.stack(r, axis=-1) for r in rows], axis=-2)


def cubic_constants(c):
    """(C11, C12, C44) from a 6×6 Voigt tensor, averaging the symmetry-equivalent entries."""
    c = jnp.asarray(c)
    c11 = (c[0, 0] + c[1, 1] + c[2, 2]) / 3.0
    c12 = (c[0, 1] + c[0, 2] + c[1, 2]) / 3.0
    c44 = (c[3, 3] + c[4, 4] + c[5, 5]) / 3.0
    return jnp.stack([c11, c12, c44])


def hexagonal_constants(c):
    """(C11, C12, C13, C33, C44) from a 6×6 Voigt tensor with the c axis along z.

    Equivalent entries are averaged: C11 = (C11 + C22)/2, C13 = (C13 + C23)/2, C44 = (C44 + C55)/2.
    C66 = (C11 − C12)/2 is implied by hexagonal symmetry and not returned.
    """
    c = jnp.asarray(c)
    return jnp.stack([(c[0, 0] + c[1, 1]) / 2.0, c[0, 1], (c[0, 2] + c[1, 2]) / 2.0, c[2, 2],
                      (c[3, 3] + c[4, 4]) / 2.0])


def upper_triangle(c):
    """The 21 independent entries C_IJ, I <= J, row by row (C11, C12, …, C16, C22, …, C66)."""
    iu = np.triu_indices(6)
    return jnp.asarray(c)[iu]


def voigt_moduli_cubic(c11, c12, c44):
    """Voigt bulk modulus K, shear modulus G and Poisson ratio ν of a cubic polycrystal.

    K = (C11 + 2 C12)/3,  G = (C11 − C12 + 3 C44)/5,  ν = (3K − 2G)/(2(3K + G)).
    """
    k = (c11 + 2.0 * c12) / 3.0
    g = (c11 - c12 + 3.0 * c44) / 5.0
    return k, g, (3.0 * k - 2.0 * g) / (2.0 * (3.0 * k + g))


def voigt_moduli_hexagonal(c11, c12, c13, c33, c44):
    """Voigt bulk modulus K, shear modulus G and Poisson ratio ν of a hexagonal polycrystal.

    K = 2/9 (C11 + C12 + 2 C13 + C33/2),  G = 1/30 (12 C44 + 7 C11 − 5 C12 + 2 C33 − 4 C13),
    ν = (3K − 2G)/(2G + 6K).
    """
    k = 2.0 / 9.0 * (c11 + c12 + 2.0 * c13 + 0.5 * c33)
    g = (12.0 * c44 + 7.0 * c11 - 5.0 * c12 + 2.0 * c33 - 4.0 * c13) / 30.0
    return k, g, (3.0 * k - 2.0 * g) / (2.0 * g + 6.0 * k)
