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
