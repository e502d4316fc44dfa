"""The elastic observable's cheap DiffTRe contraction equals contracting the full Born terms,
in value and in its parameter gradient (float64), for a pair potential, EAM and DimeNet++; so
does the gradient the engine takes from `contract_grad` (assembled direction by direction)."""
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk

from fusepot.core import neighbors as nb
from fusepot.core.interfaces import Frame, StatePoint
from fusepot.core.plugins import BuildContext, get_plugin_manager
from fusepot.core.system import from_ase
from fusepot.plugins.solid.elastic import ElasticConstants
from test_solid_elastic import _toy_eam

PM = get_plugin_manager()
CASES = {
    "lennard_jones": ("Ar", bulk("Ar", "hcp", a=3.74, c=6.1), {"epsilon": 0.0104, "sigma": 3.40}),
    "eam": ("Cu", bulk("Cu", "fcc", a=3.6, cubic=True), None),  # test_solid_elastic's toy tables
    "dimenet_pp": ("Ti", bulk("Ti", "hcp", a=2.951, c=4.684),
                   {"n_interaction_blocks": 1, "embed_size": 8, "out_embed_size": 8, "type_embed_size": 4,
                    "int_embed_size": 4, "basis_embed_size": 4, "cutoff": 4.0}),
}


def _setup(name):
    symbol, atoms, params = CASES[name]
    atoms = atoms.repeat((2, 2, 2))
    atoms.positions += 0.05 * np.random.default_rng(3).normal(size=atoms.positions.shape)
    conf, _ = from_ase(atoms)
    pot = _toy_eam() if params is None else PM.build("potential", name, params, BuildContext(species=[symbol]))
    nbrs = nb.allocate(conf.positions, conf.box, pot.cutoff, 0.3)
    if hasattr(pot, "sized_for"):
        pot = pot.sized_for(conf, nbrs)
    frame = Frame(conf, jnp.zeros_like(conf.positions), jnp.ones(conf.positions.shape[0]), StatePoint(300.0))
    rng = np.random.default_rng(7)
    cot = jnp.asarray(rng.normal(size=(7, 6)))  # a generic, non-symmetric cotangent
    return pot, frame, nbrs, cot


# the reference (a third derivative through the potential's reverse pass) compiles for minutes
# for DimeNet++ and ~half a minute for EAM with affine strain: those cases are slow-marked
SLOW = {("dimenet_pp", "affine"), ("dimenet_pp", "pair_vectors"), ("eam", "affine")}


@pytest.mark.parametrize("name,method", [pytest.param(n, m, marks=[pytest.mark.slow] if (n, m) in SLOW else [])
                                         for n in sorted(CASES) for m in ("affine", "pair_vectors")])
def test_contraction_equals_full_born_terms_in_value_and_gradient(name, method):
    pot, frame, nbrs, cot = _setup(name)
    obs = ElasticConstants(symmetry="full", born_method=method)
    params, static = eqx.partition(pot, eqx.is_inexact_array)

    def full(p):
        return jnp.sum(cot * obs.per_frame(eqx.combine(p, static), frame, nbrs))

    def cheap(p):
        return obs.contract(eqx.combine(p, static), frame, nbrs, cot)

    # jitted: op by op, these higher derivatives cost ~3x their compilation (EAM: 16 s vs 6 s)
    v_full, g_full = jax.jit(jax.value_and_grad(full))(params)
    v_cheap, g_cheap = jax.jit(jax.value_and_grad(cheap))(params)
    np.testing.assert_allclose(float(v_cheap), float(v_full), rtol=1e-10, atol=1e-14)
    leaves_full, leaves_cheap = jax.tree_util.tree_leaves(g_full), jax.tree_util.tree_leaves(g_cheap)
    assert len(leaves_full) == len(leaves_cheap) > 0
    scale = max(float(jnp.max(jnp.abs(a))) for a in leaves_full)
    for a, b in zip(leaves_full, leaves_cheap):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-8, atol=1e-10 * scale)
    # the gradient the DiffTRe engine uses: assembled direction by direction
    g_own = jax.jit(lambda p: obs.contract_grad(eqx.combine(p, static), frame, nbrs, cot))(params)
    leaves_own = jax.tree_util.tree_leaves(g_own)
    assert len(leaves_own) == len(leaves_full)
    for a, b in zip(leaves_full, leaves_own):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-8, atol=1e-10 * scale)


@pytest.mark.parametrize("method", ["affine", "pair_vectors"])
def test_tangent_batch_does_not_change_the_result(method):
    pot, frame, nbrs, cot = _setup("lennard_jones")
    ref = ElasticConstants(symmetry="full", born_method=method, tangent_batch=6)
    for batch in (1, 2, 3):
        obs = ElasticConstants(symmetry="full", born_method=method, tangent_batch=batch)
        np.testing.assert_allclose(np.asarray(obs.per_frame(pot, frame, nbrs)),
                                   np.asarray(ref.per_frame(pot, frame, nbrs)), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(float(obs.contract(pot, frame, nbrs, cot)),
                                   float(ref.contract(pot, frame, nbrs, cot)), rtol=1e-12)
        for a, b in zip(jax.tree_util.tree_leaves(ref.contract_grad(pot, frame, nbrs, cot)),
                        jax.tree_util.tree_leaves(obs.contract_grad(pot, frame, nbrs, cot))):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-10, atol=1e-14)
    with pytest.raises(ValueError, match="tangent_batch"):
        ElasticConstants(symmetry="full", born_method=method, tangent_batch=4).per_frame(pot, frame, nbrs)


def _projection_cotangent(symmetry, seed=11, n_frames=5):
    """One frame's cotangent of the (7, 6) Born terms under a random linear loss on the
    symmetry's constants, through the stress-fluctuation formula — what the DiffTRe engine passes."""
    from fusepot.plugins.solid.elastic import project, stress_fluctuation_tensor
    rng = np.random.default_rng(seed)
    vals = jnp.asarray(rng.normal(size=(n_frames, 7, 6)))
    w = jnp.full(n_frames, 1.0 / n_frames)
    r = jnp.asarray(rng.normal(size=project(jnp.eye(6), symmetry).shape))

    def loss(v):
        return jnp.sum(r * project(stress_fluctuation_tensor(w, v[:, 0], v[:, 1:], 20.0, 0.03, 8), symmetry))

    return jax.grad(loss)(vals)[0]


@pytest.mark.parametrize("batch", [1, 2, 3, 6])
def test_hexagonal_support_skips_c66_and_changes_nothing(batch):
    """Hexagonal constants never read C66, so the contraction takes 5 strain directions (not 6)
    and gives the same value and gradient as all six; with a tangent batch that does not divide
    5 the padding directions contribute nothing."""
    from fusepot.plugins.solid.born import born_contraction, born_contraction_grad
    from fusepot.plugins.solid.elastic import strain_support
    assert strain_support("hexagonal") == (0, 1, 2, 3, 4)
    assert strain_support("cubic") == strain_support("full", "upper") == tuple(range(6))
    pot, frame, nbrs, _ = _setup("lennard_jones")
    cot = _projection_cotangent("hexagonal")
    assert float(jnp.max(jnp.abs(cot[:, 5]))) == 0.0 and float(jnp.max(jnp.abs(cot[1 + 5]))) == 0.0
    assert float(jnp.max(jnp.abs(cot[1:, :5]))) > 0.0 and float(jnp.max(jnp.abs(cot[0, :5]))) > 0.0
    obs = ElasticConstants(symmetry="hexagonal", tangent_batch=batch)
    assert obs.strain_support == (0, 1, 2, 3, 4)
    params, static = eqx.partition(pot, eqx.is_inexact_array)
    ref = jax.grad(lambda p: jnp.sum(cot * obs.per_frame(eqx.combine(p, static), frame, nbrs)))(params)
    six = born_contraction_grad(pot, frame.conf, nbrs, cot[0], cot[1:], "affine", 1, None)
    five = obs.contract_grad(pot, frame, nbrs, cot)
    np.testing.assert_allclose(float(obs.contract(pot, frame, nbrs, cot)),
                               float(born_contraction(pot, frame.conf, nbrs, cot[0], cot[1:])), rtol=1e-10)
    np.testing.assert_allclose(float(obs.contract(pot, frame, nbrs, cot)),
                               float(jnp.sum(cot * obs.per_frame(pot, frame, nbrs))), rtol=1e-10)
    scale = max(float(jnp.max(jnp.abs(a))) for a in jax.tree_util.tree_leaves(ref))
    assert scale > 0
    for a, b, c in zip(*(jax.tree_util.tree_leaves(t) for t in (ref, six, five))):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-8, atol=1e-10 * scale)
        np.testing.assert_allclose(np.asarray(c), np.asarray(a), rtol=1e-8, atol=1e-10 * scale)
    with pytest.raises(ValueError, match="support"):
        born_contraction_grad(pot, frame.conf, nbrs, cot[0], cot[1:], "affine", 1, (0, 0, 1))
