"""VACF and self-diffusion of a Lennard-Jones liquid: Green–Kubo vs Einstein, and a published value.

Reference: A. Rahman, "Correlations in the motion of atoms in liquid argon", Phys. Rev. 136,
A405 (1964): LJ argon (ε/k_B = 120 K, σ = 3.4 Å, m = 39.948 amu, cutoff 2.25 σ), N = 864,
ρ = 1.374 g/cm³ (ρ* = 0.814), T = 94.4 K (T* = 0.787): D = 2.43 × 10⁻⁵ cm²/s (from the MSD
slope; no statistical error is quoted — we assume ±5 %).  Truncation (not shift) at 2.25 σ
gives the same forces as our truncated-and-shifted LJ, so the dynamics are the same model.
Dynamics use Langevin with γ = 0.01/ps, ~10³ times below the fluid's own friction
kT/(mD) ≈ 8/ps, so the thermostat changes D by ~0.1 %.

Open gap (issue #5): the acceptance criterion asks for a published LJ value *with an error bar*.
None could be read and cited with the tools available when this was last revisited: the tables of
Meier, Laesecke & Kabelac, J. Chem. Phys. 121, 9526 (2004) (the reference with uncertainties and a
finite-size analysis) were not accessible, and the NIST SRS LJ MD isotherm (T* = 0.85, N = 500,
3σ cutoff) was found only as a third-party copy whose D* column carries no uncertainty.  Rahman is
therefore kept with the assumed ±5 %, and the thresholds are unchanged.
"""
import math

import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk

from fusepot.core.interfaces import StatePoint, Trajectory
from fusepot.core.plugins import BuildContext, get_plugin_manager
from fusepot.core.system import from_ase
from fusepot.core.units import BOLTZMANN_EV_PER_K, TIME_UNIT_PS, convert
from fusepot.plugins.classical.lj import LennardJones
from fusepot.plugins.ensembles.langevin import LangevinParams, build_langevin
from fusepot.plugins.structure import VACF, SelfDiffusion

EPS_EV = 120.0 * BOLTZMANN_EV_PER_K
SIGMA = 3.4
MASS = 39.948
T_K = 94.4
RHO_G_CM3 = 1.374
D_RAHMAN_A2_PS = float(convert(2.43e-9, "m^2/s", "A^2/ps"))  # 2.43e-5 cm²/s
D_RAHMAN_REL_ERR = 0.05  # assumed: Rahman quotes none


def liquid_argon(cells: int):
    """fcc lattice of 4·cells³ atoms scaled to Rahman's density (melted by the first stage)."""
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat(cells)
    n = len(atoms)
    volume = n * MASS / (RHO_G_CM3 * 6.02214076e23) * 1e24  # Å³
    atoms.set_cell(np.eye(3) * volume ** (1 / 3), scale_atoms=True)
    conf, masses = from_ase(atoms)
    lj = LennardJones(jnp.full((1, 1), math.log(EPS_EV)), jnp.full((1, 1), math.log(SIGMA)), 2.25 * SIGMA)
    return lj, conf, masses


def run_liquid(cells: int, production_ps: float, seed: int = 0) -> Trajectory:
    import jax
    lj, conf, masses = liquid_argon(cells)
    key = jax.random.PRNGKey(seed)
    stages = [  # (temperature K, friction 1/ps, ps)
        (300.0, 5.0, 2.0),  # melt (T* = 2.5)
        (T_K, 5.0, 4.0),  # quench and equilibrate at the state point
        (T_K, 0.01, production_ps),  # near-Newtonian production
    ]
    carry = None
    for k, (temp, gamma, ps) in enumerate(stages):
        # one sampling interval and chunk size for all stages: the jitted chunk compiles once per friction
        ens = build_langevin(LangevinParams(timestep_fs=5.0, production_ps=ps, sample_every_ps=0.02,
                                            friction_per_ps=gamma, chunk_frames=100), None)
        traj, carry = ens.sample(lj, conf, masses, StatePoint(temp), jax.random.fold_in(key, k), restart=carry)
    return traj


def _check_kinetic_temperature(traj):
    v = np.asarray(traj.velocities)
    t = MASS * np.mean(v ** 2) / BOLTZMANN_EV_PER_K
    assert abs(t - T_K) < 0.05 * T_K, t


def test_diffusion_fast_lj_liquid():
    """256 atoms, 16 ps: GK and Einstein agree; D within 25 % of Rahman (N = 256 is ~15 % slower
    than N = 864 by the Yeh–Hummer finite-size correction, and the run is short)."""
    traj = run_liquid(4, 16.0)
    _check_kinetic_temperature(traj)
    d = SelfDiffusion(correlation_ps=2.0, origin_spacing_ps=0.5, n_blocks=7, fit_start_ps=1.0).from_trajectory(traj)
    print(f"\nN=256: D_GK = {d.green_kubo:.4f} ± {d.green_kubo_error:.4f}, D_E = {d.einstein:.4f} ± "
          f"{d.einstein_error:.4f} Å²/ps ({d.n_origins} origins); Rahman {D_RAHMAN_A2_PS:.4f}")
    assert abs(d.relative_difference) < 0.10
    assert abs(d.green_kubo - D_RAHMAN_A2_PS) < 0.25 * D_RAHMAN_A2_PS
    vacf = VACF(correlation_ps=2.0, origin_spacing_ps=0.5, n_blocks=7).from_trajectory(traj)
    # C(0) = 3 kT/m (equipartition), and a dense liquid's VACF goes negative (cage back-scattering)
    c0 = 3 * BOLTZMANN_EV_PER_K * T_K / MASS / TIME_UNIT_PS ** 2
    assert abs(vacf.vacf[0] - c0) < 0.05 * c0
    assert vacf.normalized.min() < -0.02
    assert np.allclose(vacf.vacf, d.vacf)


@pytest.mark.slow
def test_diffusion_matches_rahman_lj_argon():
    """N = 864 as Rahman, 60 ps production (~111 origins 0.5 ps apart).

    Criteria: |D_GK − D_E| < 10 % of D_E, and for each estimator
    |D − D_Rahman| < 2·sqrt(σ_block² + (0.05·D_Rahman)²), i.e. two combined standard errors, the
    reference's share being the assumed 5 % (Rahman quotes none).  Same N as Rahman, so no
    finite-size correction is applied.
    """
    traj = run_liquid(6, 60.0, seed=1)
    _check_kinetic_temperature(traj)
    d = SelfDiffusion(correlation_ps=4.0, origin_spacing_ps=0.5, n_blocks=8, fit_start_ps=2.0).from_trajectory(traj)
    print(f"\nN=864: D_GK = {d.green_kubo:.4f} ± {d.green_kubo_error:.4f}, D_E = {d.einstein:.4f} ± "
          f"{d.einstein_error:.4f} Å²/ps ({d.n_origins} origins); Rahman {D_RAHMAN_A2_PS:.4f} ± "
          f"{D_RAHMAN_REL_ERR * D_RAHMAN_A2_PS:.4f} (assumed)")
    assert abs(d.relative_difference) < 0.10
    tol = 2.0 * math.hypot(d.green_kubo_error, D_RAHMAN_REL_ERR * D_RAHMAN_A2_PS)
    assert abs(d.green_kubo - D_RAHMAN_A2_PS) < tol
    assert abs(d.einstein - D_RAHMAN_A2_PS) < 2.0 * math.hypot(d.einstein_error, D_RAHMAN_REL_ERR * D_RAHMAN_A2_PS)


def _toy_trajectory(n_frames=400, n_atoms=50, dt_ps=0.01, seed=0):
    """Independent Ornstein–Uhlenbeck velocities with known D = ⟨v²⟩_1D τ and VACF 3⟨v²⟩ e^{−t/τ}."""
    rng = np.random.default_rng(seed)
    tau, s2 = 0.1, 4.0  # ps, (Å/ps)² per component
    a = math.exp(-dt_ps / tau)
    v = np.empty((n_frames, n_atoms, 3))
    v[0] = rng.normal(0, math.sqrt(s2), (n_atoms, 3))
    for k in range(1, n_frames):
        v[k] = a * v[k - 1] + math.sqrt(s2 * (1 - a * a)) * rng.normal(size=(n_atoms, 3))
    x = np.cumsum(v, axis=0) * dt_ps  # Å
    box = np.eye(3) * 1000.0
    traj = Trajectory(jnp.asarray(x), jnp.broadcast_to(jnp.asarray(box), (n_frames, 3, 3)),
                      jnp.asarray(v * TIME_UNIT_PS), jnp.zeros(n_frames), jnp.arange(1, n_frames + 1) * dt_ps,
                      jnp.zeros(n_atoms, int), jnp.ones(n_atoms), StatePoint(300.0))
    return traj, s2 * tau


def test_diffusion_estimators_on_a_known_process():
    traj, d_exact = _toy_trajectory(n_frames=2000, n_atoms=200)
    obs = get_plugin_manager().build("observable", "self_diffusion",
                                     {"correlation_ps": 1.0, "origin_spacing_ps": 0.1, "fit_start_ps": 0.5,
                                      "remove_drift": False}, BuildContext(species=["Ar"]))
    d = obs.from_trajectory(traj)
    assert d.n_origins == (1999 - 100) // 10 + 1  # 190 windows of 1 ps fit in 20 ps
    assert abs(d.green_kubo - d_exact) < 4 * d.green_kubo_error + 0.02 * d_exact
    assert abs(d.einstein - d_exact) < 4 * d.einstein_error + 0.02 * d_exact
    assert 0 < d.green_kubo_error < 0.1 * d_exact
    si = SelfDiffusion(correlation_ps=1.0, origin_spacing_ps=0.1, fit_start_ps=0.5, remove_drift=False,
                       output_unit="m^2/s").from_trajectory(traj)
    assert si.green_kubo == pytest.approx(d.green_kubo * 1e-8)  # 1 Å²/ps = 1e-8 m²/s


def test_time_correlation_inputs_are_checked():
    traj, _ = _toy_trajectory(n_frames=100, n_atoms=5)
    with pytest.raises(ValueError, match="origins"):
        SelfDiffusion(correlation_ps=0.5, origin_spacing_ps=0.1, n_origins=50).from_trajectory(traj)
    with pytest.raises(ValueError, match="whole number"):
        VACF(correlation_ps=0.505, origin_spacing_ps=0.1).from_trajectory(traj)
    wrapped = Trajectory(traj.positions % 3.0, jnp.broadcast_to(jnp.eye(3) * 3.0, (100, 3, 3)), traj.velocities,
                         traj.ref_energy, traj.times, traj.species, traj.masses, traj.state)
    with pytest.raises(ValueError, match="wrapped"):
        VACF(correlation_ps=0.5, origin_spacing_ps=0.1).from_trajectory(wrapped)
    assert not type(VACF()).reweightable and not SelfDiffusion.reweightable
