"""DiffTRe engine: weights, N_eff, gradient vs finite differences."""
import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest

from fusepot.core import difftre
from fusepot.core.plugins import get_plugin_manager

from helpers import lj_argon, short_trajectory


@pytest.fixture(scope="module")
def traj():
    return short_trajectory(lj_argon(), production_ps=2.0)


def targets():
    pm = get_plugin_manager()
    return [difftre.Target("pressure", pm.build("observable", "pressure", {}), 0.1, "GPa", weight=1.0),
            difftre.Target("energy", pm.build("observable", "energy_per_atom", {}), -0.07, "eV/atom", uncertainty=0.001)]


def test_weights_uniform_at_reference_parameters(traj):
    pot = lj_argon()
    u, _, _ = difftre.evaluate_frames(pot, traj, {})
    traj = eqx.tree_at(lambda t: t.ref_energy, traj, u)
    r = difftre.reweight(pot, traj, targets(), with_grad=False)
    np.testing.assert_allclose(r.weights, 1.0 / traj.n_frames, rtol=1e-12)
    assert r.n_eff == pytest.approx(traj.n_frames, rel=1e-12)


def test_weights_finite_for_huge_energy_differences():
    beta = 1.0
    u_ref = jnp.zeros(5)
    u_new = jnp.array([0.0, 1e4, -1e4, 5e3, 2.0])  # differences up to 10^4 kT
    w = difftre.reweighting_weights(beta, u_new, u_ref)
    assert bool(jnp.all(jnp.isfinite(w)))
    assert float(jnp.sum(w)) == pytest.approx(1.0)
    assert float(w[2]) == pytest.approx(1.0)
    assert float(difftre.effective_sample_size(w)) == pytest.approx(1.0)
    g = __import__("jax").grad(lambda u: difftre.effective_sample_size(difftre.reweighting_weights(beta, u, u_ref)))(u_new)
    assert bool(jnp.all(jnp.isfinite(g)))


def test_effective_sample_size_bounds():
    assert float(difftre.effective_sample_size(jnp.full(10, 0.1))) == pytest.approx(10.0)
    assert float(difftre.effective_sample_size(jnp.array([1.0, 0, 0]))) == pytest.approx(1.0)


def test_gradient_matches_central_finite_difference(traj):
    # reweight to parameters away from the reference so both weight and observable paths matter
    pot = eqx.tree_at(lambda p: (p.log_sigma, p.log_epsilon), lj_argon(), replace_fn=lambda x: x + 0.005)
    ts = targets()
    r = difftre.reweight(pot, traj, ts)
    assert r.n_eff < traj.n_frames
    h = 1e-5
    for field in ("log_sigma", "log_epsilon"):
        def loss(delta):
            p = eqx.tree_at(lambda q: getattr(q, field), pot, replace_fn=lambda x: x + delta)
            return difftre.reweight(p, traj, ts, with_grad=False).loss
        fd = (loss(h) - loss(-h)) / (2 * h)
        an = float(getattr(r.grad, field)[0, 0])
        rel = abs(an - fd) / abs(fd)
        print(f"{field}: analytic {an:.8g}, finite difference {fd:.8g}, relative error {rel:.2e}")
        assert rel < 1e-4


def test_gradient_chunking_is_exact(traj):
    pot = eqx.tree_at(lambda p: p.log_sigma, lj_argon(), replace_fn=lambda x: x + 0.003)
    ts = targets()
    a = difftre.reweight(pot, traj, ts, batch_size=7)  # 20 frames: uneven chunks with padding
    c = difftre.reweight(pot, traj, ts, batch_size=32)  # more padding than frames
    np.testing.assert_allclose(c.grad.log_sigma, a.grad.log_sigma, rtol=1e-10)
    b = difftre.reweight(pot, traj, ts, batch_size=20)
    np.testing.assert_allclose(a.grad.log_sigma, b.grad.log_sigma, rtol=1e-10)
    assert a.loss == pytest.approx(b.loss, rel=1e-12)


def test_time_correlation_observable_refused_as_target():
    from fusepot.core.interfaces import Observable

    class VACFLike(Observable):
        reweightable = False

        def from_trajectory(self, traj):
            return 0.0

    with pytest.raises(ValueError, match="cannot be reweighted"):
        difftre.Target("vacf", VACFLike(), 0.0, "1", weight=1.0)


def test_target_weight_from_uncertainty_and_units():
    pm = get_plugin_manager()
    t = difftre.Target("p", pm.build("observable", "pressure", {}), 1000.0, "MPa", uncertainty=100.0)
    assert float(t.value_in_obs_unit) == pytest.approx(1.0)
    assert t.lam == pytest.approx(100.0)  # 1 / (0.1 GPa)^2
    # the titanium paper's pressure weight, 1e-9 in (kJ/mol/nm³)⁻², is 3.627e-4 GPa⁻²
    w = difftre.Target("p", pm.build("observable", "pressure", {}), 0.0, "kJ/mol/nm^3", weight=1e-9)
    assert w.lam == pytest.approx(1e-9 * (1 / 1.66054e-3) ** 2, rel=1e-4)
    with pytest.raises(ValueError, match="exactly one"):
        difftre.Target("p", pm.build("observable", "pressure", {}), 1.0, "GPa", weight=1.0, uncertainty=1.0)


def test_block_error_bars_reported(traj):
    from fusepot.core.stats import block_average

    r = difftre.reweight(lj_argon(), traj, targets(), with_grad=False)
    assert set(r.errors) == {"pressure", "energy"}
    # at the reference parameters (uniform-ish weights) the block error equals plain block averaging
    _, vals, _ = difftre.evaluate_frames(lj_argon(), traj, {"p": targets()[0].observable})
    plain = block_average(np.asarray(targets()[0].observable.to_user(vals["p"])))
    assert float(r.errors["pressure"]) == pytest.approx(float(plain.error), rel=0.05)


def test_prior_potential_is_added_and_not_trained(traj):
    from pathlib import Path

    import yaml

    from fusepot.core.build import build_potential
    from fusepot.core.spec import parse_spec

    data = yaml.safe_load((Path(__file__).parent / "data" / "multi_state.yaml").read_text())
    data["prior"] = {"name": "lennard_jones", "params": {"epsilon": 0.001, "sigma": 3.0}}
    pot = build_potential(parse_spec(data), ["Ar"], Path("."), jnp.float64)
    r = difftre.reweight(pot, traj, targets()[:1])
    assert float(jnp.abs(r.grad.prior.log_sigma).max()) == 0.0
    assert float(jnp.abs(r.grad.model.log_sigma).max()) > 0.0
    alone = difftre.reweight(pot.model, traj, targets()[:1], with_grad=False)
    assert r.estimates["pressure"] != pytest.approx(alone.estimates["pressure"])
