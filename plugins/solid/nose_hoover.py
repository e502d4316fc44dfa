"""Nosé–Hoover-chain NVT and anisotropic MTK NPT molecular dynamics.

Equations of motion: Martyna, Tuckerman & Klein (MTK), J. Chem. Phys. 101, 4177 (1994), with
a diagonal (per-Cartesian-axis) cell as in Shinoda, Shiga & Mikami, PRB 69, 134103 (2004):

    ṙ_i   = v_i + v_g ∘ r_i                          v_g = p_g / W  (3 box "velocities")
    m v̇_i = F_i − m (v_g + tr(v_g)/N_f) ∘ v_i − m v_ξ1 v_i
    ḣ     = h diag(v_g)                              (box rows scale along x, y, z)
    W v̇_gα = V (P_int,αα − P_ext) + (1/N_f) Σ m v² − W v_η1 v_gα
    P_int = (Σ m v⊗v + W_vir) / V,  W_vir = −∂U/∂ε (core.mechanics)

with one Nosé–Hoover chain (ξ) on the particles and one (η) on the barostat, integrated by
the Trotter factorisation of Martyna, Tuckerman, Tobias & Klein, Mol. Phys. 87, 1117 (1996):
chains and barostat half steps around a velocity-Verlet core; each chain half step uses
`chain_steps` multiple time steps with Suzuki–Yoshida weights of order `sy_order`.

Masses (LAMMPS conventions, so τ values carry over): Q_1 = N_f kT τ_T², Q_j = kT τ_T²;
W = (N + 1) kT τ_P² per axis; barostat chain Q_b1 = d_b kT τ_P², Q_bj = kT τ_P², d_b the
number of independent box degrees of freedom.  `couple` ties axes: "none" (a, b, c free),
"xy" (x and y together: hexagonal a and c independent), "xyz" (isotropic).
N_f = 3N − 3 (total momentum is conserved).

NVT and NPT share `NHState`, so a Carry from one restarts the other (see protocol.py).
"""
from __future__ import annotations

from typing import Literal, Optional

import equinox as eqx
import jax
import jax.numpy as jnp
from pydantic import Field

from fusepot.core import md
from fusepot.core.interfaces import Ensemble, StatePoint
from fusepot.core.mechanics import energy_forces_virial
from fusepot.core.system import Configuration
from fusepot.core.units import gpa_to_internal, ps_to_internal
from fusepot.plugins.ensembles.common import MDRunParams
from fusepot.plugins.ensembles.langevin import maxwell_boltzmann


class NHState(eqx.Module):
    positions: jnp.ndarray
    velocities: jnp.ndarray
    forces: jnp.ndarray
    energy: jnp.ndarray  # potential energy, eV
    virial: jnp.ndarray  # W = −∂U/∂ε (3, 3), eV
    box: jnp.ndarray
    species: jnp.ndarray
    masses: jnp.ndarray
    key: jnp.ndarray
    chain_xi: jnp.ndarray  # (M,) particle thermostat positions
    chain_v: jnp.ndarray  # (M,) particle thermostat velocities, 1/time
    baro_v: jnp.ndarray  # (3,) box strain rates v_g, 1/time
    baro_chain_xi: jnp.ndarray  # (M,)
    baro_chain_v: jnp.ndarray  # (M,)


def suzuki_yoshida_weights(order: int) -> tuple[float, ...]:
    """Weights of the Suzuki–Yoshida factorisation of order 1, 3, 5 or 7 (they sum to 1)."""
    if order == 1:
        return (1.0,)
    if order == 3:
        w = 1.0 / (2.0 - 2.0 ** (1.0 / 3.0))
        return (w, 1.0 - 2.0 * w, w)
    if order == 5:
        w = 1.0 / (4.0 - 4.0 ** (1.0 / 3.0))
        return (w, w, 1.0 - 4.0 * w, w, w)
    if order == 7:
        w1, w2, w3 = 0.784513610477560, 0.235573213359357, -1.17767998417887
        w0 = 1.0 - 2.0 * (w1 + w2 + w3)
        return (w3, w2, w1, w0, w1, w2, w3)
    raise ValueError(f"Suzuki–Yoshida order must be 1, 3, 5 or 7, not {order}")


def chain_masses(dof, kT, tau, length: int):
    """(Q_1, …, Q_M) = (dof kT τ², kT τ², …) (amu Å²)."""
    q = jnp.full((length,), kT * tau**2)
    return q.at[0].multiply(dof)


def chain_half_step(xi, v, kin2, dof, kT, q, half_dt, n_steps: int, weights):
    """Propagate a Nosé–Hoover chain over `half_dt` (MTTK 1996, Fig. 2 with δ/2 → our d).

    kin2 = Σ m v² of the coupled degrees of freedom at the start.  Returns (xi, v, scale): the
    coupled velocities must be multiplied by `scale`.
    """
    m = q.shape[0]
    scale = jnp.ones((), kin2.dtype)

    def force(j, v, scale):
        if j == 0:
            return (kin2 * scale**2 - dof * kT) / q[0]
        return (q[j - 1] * v[j - 1] ** 2 - kT) / q[j]

    for _ in range(n_steps):
        for w in weights:
            d = w * half_dt / n_steps
            v = v.at[m - 1].add(0.5 * d * force(m - 1, v, scale))
            for j in range(m - 2, -1, -1):
                e = jnp.exp(-0.25 * d * v[j + 1])
                v = v.at[j].set((v[j] * e + 0.5 * d * force(j, v, scale)) * e)
            scale = scale * jnp.exp(-d * v[0])
            xi = xi + d * v
            for j in range(m - 1):
                e = jnp.exp(-0.25 * d * v[j + 1])
                v = v.at[j].set((v[j] * e + 0.5 * d * force(j, v, scale)) * e)
            v = v.at[m - 1].add(0.5 * d * force(m - 1, v, scale))
    return xi, v, scale


def degrees_of_freedom(n_atoms: int) -> int:
    return 3 * n_atoms - 3


def kinetic_temperature(velocities, masses, dof=None):
    """Instantaneous temperature (K) from Σ m v² / (N_f k_B)."""
    from fusepot.core.units import BOLTZMANN_EV_PER_K

    dof = degrees_of_freedom(velocities.shape[-2]) if dof is None else dof
    return jnp.sum(masses[..., :, None] * velocities**2, axis=(-2, -1)) / (dof * BOLTZMANN_EV_PER_K)


def _init_state(potential, conf: Configuration, masses, sp: StatePoint, nbrs, key, chain_length: int):
    k1, k2 = jax.random.split(key)
    e, f, w = energy_forces_virial(potential, conf, nbrs)
    v = maxwell_boltzmann(k1, masses, sp.kT, conf.positions.dtype)
    z = jnp.zeros((chain_length,), conf.positions.dtype)
    return NHState(conf.positions, v, f, e, w, conf.box, conf.species, masses, k2, z, z, jnp.zeros(3, z.dtype), z, z)


def _kick_and_damp(v, f, m, rate, half_dt):
    """Half step of m v̇ = F − m rate v (rate per axis or scalar), symmetric split."""
    e = jnp.exp(-0.5 * half_dt * rate)
    return (v * e + half_dt * f / m) * e


class _NoseHooverBase(Ensemble):
    timestep: float  # internal time units
    tau_t: float  # internal time units
    chain_length: int = eqx.field(static=True)
    chain_steps: int = eqx.field(static=True)
    sy_order: int = eqx.field(static=True)
    run: MDRunParams = eqx.field(static=True)

    def _thermostat(self, s: NHState, sp: StatePoint, v):
        n = v.shape[0]
        dof = degrees_of_freedom(n)
        q = chain_masses(dof, sp.kT, self.tau_t, self.chain_length)
        kin2 = jnp.sum(s.masses[:, None] * v * v)
        xi, cv, scale = chain_half_step(s.chain_xi, s.chain_v, kin2, dof, sp.kT, q, 0.5 * self.timestep,
                                        self.chain_steps, suzuki_yoshida_weights(self.sy_order))
        return xi, cv, v * scale

    def init(self, potential, conf, masses, sp, nbrs, key):
        return _init_state(potential, conf, masses, sp, nbrs, key, self.chain_length)

    def initial_carry(self, potential, conf, masses, state, key):
        return md.init_carry(self.init, potential, conf, masses, state, key, self.run.neighbor_skin)

    def sample(self, potential, conf, masses, state, key, restart=None, progress=None):
        r = self.run
        return md.run(self.step, self.init, potential, conf, masses, state, key, self.timestep,
                      0 if restart is not None else r.n_equilibration_steps, r.n_frames, r.steps_per_frame,
                      restart=restart, progress=progress, skin=r.neighbor_skin, chunk_frames=r.chunk_frames,
                      label=self.label)


class NoseHooverNVT(_NoseHooverBase):
    """NVT: Nosé–Hoover chain around velocity Verlet; fixed box."""

    label = "nvt_nose_hoover"

    def step(self, potential, s: NHState, nbrs, sp: StatePoint) -> NHState:
        dt, m = self.timestep, s.masses[:, None]
        xi, cv, v = self._thermostat(s, sp, s.velocities)
        v = v + 0.5 * dt * s.forces / m
        x = s.positions + dt * v
        e, f, w = energy_forces_virial(potential, Configuration(x, s.species, s.box), nbrs)
        v = v + 0.5 * dt * f / m
        s = eqx.tree_at(lambda t: (t.chain_xi, t.chain_v), s, (xi, cv))
        xi, cv, v = self._thermostat(s, sp, v)
        return NHState(x, v, f, e, w, s.box, s.species, s.masses, s.key, xi, cv, s.baro_v, s.baro_chain_xi,
                       s.baro_chain_v)

    def conserved_energy(self, s: NHState, sp: StatePoint):
        """H' = K + U + Σ ½ Q_j v_j² + N_f kT ξ_1 + kT Σ_{j>1} ξ_j (eV); constant up to O(dt²)."""
        dof = degrees_of_freedom(s.positions.shape[0])
        q = chain_masses(dof, sp.kT, self.tau_t, self.chain_length)
        kin = 0.5 * jnp.sum(s.masses[:, None] * s.velocities**2)
        return kin + s.energy + 0.5 * jnp.sum(q * s.chain_v**2) + sp.kT * (dof * s.chain_xi[0] + jnp.sum(s.chain_xi[1:]))


_GROUPS = {"none": ((0,), (1,), (2,)), "xy": ((0, 1), (2,)), "xyz": ((0, 1, 2),)}


class NoseHooverNPT(_NoseHooverBase):
    """NPT: MTK barostat with per-axis box momenta + Nosé–Hoover chains (module docstring)."""

    tau_p: float = 0.0  # internal time units
    pressure: Optional[float] = None  # eV/Å³; None → StatePoint.pressure
    couple: str = eqx.field(static=True, default="none")
    label = "npt_nose_hoover"

    def _target_pressure(self, sp):
        return sp.pressure if self.pressure is None else jnp.asarray(self.pressure, sp.pressure.dtype)

    def _baro_mass(self, n, kT):
        return (n + 1) * kT * self.tau_p**2

    def _group_mean(self, g):
        """Average a per-axis quantity over each coupled group of axes."""
        out = g
        for grp in _GROUPS[self.couple]:
            idx = jnp.asarray(grp)
            out = out.at[idx].set(jnp.mean(g[idx]))
        return out

    def _baro_thermostat(self, s: NHState, sp: StatePoint, vg):
        n_dof = len(_GROUPS[self.couple])
        wmass = self._baro_mass(s.positions.shape[0], sp.kT)
        q = chain_masses(n_dof, sp.kT, self.tau_p, self.chain_length)
        kin2 = wmass * jnp.sum(vg * vg)
        xi, cv, scale = chain_half_step(s.baro_chain_xi, s.baro_chain_v, kin2, n_dof, sp.kT, q, 0.5 * self.timestep,
                                        self.chain_steps, suzuki_yoshida_weights(self.sy_order))
        return xi, cv, vg * scale

    def _baro_kick(self, vg, v, masses, virial, box, sp):
        n = v.shape[0]
        vol = jnp.abs(jnp.linalg.det(box))
        mvv = jnp.einsum("n,ni,ni->i", masses, v, v)
        p_int = (mvv + jnp.diagonal(virial)) / vol
        g = vol * (p_int - self._target_pressure(sp)) + jnp.sum(mvv) / degrees_of_freedom(n)
        return vg + 0.5 * self.timestep * self._group_mean(g) / self._baro_mass(n, sp.kT)

    def step(self, potential, s: NHState, nbrs, sp: StatePoint) -> NHState:
        dt, m = self.timestep, s.masses[:, None]
        dof = degrees_of_freedom(s.positions.shape[0])
        bxi, bcv, vg = self._baro_thermostat(s, sp, s.baro_v)
        xi, cv, v = self._thermostat(s, sp, s.velocities)
        vg = self._baro_kick(vg, v, s.masses, s.virial, s.box, sp)
        damp = vg + jnp.sum(vg) / dof
        v = _kick_and_damp(v, s.forces, m, damp, 0.5 * dt)
        # exact drift of ṙ = v + v_g r over dt:  r e^{v_g dt} + v dt e^{v_g dt/2} sinhc(v_g dt/2)
        a = 0.5 * vg * dt
        sinhc = jnp.where(jnp.abs(a) < 1e-6, 1.0 + a * a / 6.0, jnp.sinh(a) / jnp.where(a == 0, 1.0, a))
        grow = jnp.exp(vg * dt)
        x = s.positions * grow + v * dt * jnp.exp(a) * sinhc
        box = s.box * grow[None, :]
        e, f, w = energy_forces_virial(potential, Configuration(x, s.species, box), nbrs)
        v = _kick_and_damp(v, f, m, damp, 0.5 * dt)
        vg = self._baro_kick(vg, v, s.masses, w, box, sp)
        s = NHState(x, v, f, e, w, box, s.species, s.masses, s.key, xi, cv, vg, bxi, bcv)
        xi, cv, v = self._thermostat(s, sp, v)
        s = eqx.tree_at(lambda t: (t.chain_xi, t.chain_v, t.velocities), s, (xi, cv, v))
        bxi, bcv, vg = self._baro_thermostat(s, sp, vg)
        return eqx.tree_at(lambda t: (t.baro_chain_xi, t.baro_chain_v, t.baro_v), s, (bxi, bcv, vg))

    def conserved_energy(self, s: NHState, sp: StatePoint):
        """MTK conserved quantity H' (eV): K + U + P V + ½ W Σ v_g² + both chains' energies."""
        n = s.positions.shape[0]
        dof, n_b = degrees_of_freedom(n), len(_GROUPS[self.couple])
        q = chain_masses(dof, sp.kT, self.tau_t, self.chain_length)
        qb = chain_masses(n_b, sp.kT, self.tau_p, self.chain_length)
        kin = 0.5 * jnp.sum(s.masses[:, None] * s.velocities**2)
        vol = jnp.abs(jnp.linalg.det(s.box))
        return (kin + s.energy + self._target_pressure(sp) * vol + 0.5 * self._baro_mass(n, sp.kT) * jnp.sum(s.baro_v**2)
                + 0.5 * jnp.sum(q * s.chain_v**2) + sp.kT * (dof * s.chain_xi[0] + jnp.sum(s.chain_xi[1:]))
                + 0.5 * jnp.sum(qb * s.baro_chain_v**2)
                + sp.kT * (n_b * s.baro_chain_xi[0] + jnp.sum(s.baro_chain_xi[1:])))


# --- parameters and builders ------------------------------------------------------------------
class NoseHooverNVTParams(MDRunParams):
    tau_t_ps: float = Field(0.05, gt=0, description="thermostat time constant τ_T in ps")
    chain_length: int = Field(3, ge=1, description="Nosé–Hoover chain length M")
    chain_steps: int = Field(2, ge=1, description="multiple time steps per chain half step")
    sy_order: Literal[1, 3, 5, 7] = Field(3, description="Suzuki–Yoshida order of the chain integrator")


class NoseHooverNPTParams(NoseHooverNVTParams):
    tau_p_ps: float = Field(0.5, gt=0, description="barostat time constant τ_P in ps")
    pressure_gpa: Optional[float] = Field(None, description="target pressure in GPa (default: the state point's)")
    couple: Literal["none", "xy", "xyz"] = Field(
        "none", description="box axes that move together: none (a, b, c independent), xy (hexagonal), xyz (isotropic)")


def _run_params(p) -> MDRunParams:
    return MDRunParams(**{k: getattr(p, k) for k in MDRunParams.model_fields})


def build_nvt_nose_hoover(p: NoseHooverNVTParams, ctx) -> NoseHooverNVT:
    return NoseHooverNVT(float(ps_to_internal(p.timestep_fs / 1000)), float(ps_to_internal(p.tau_t_ps)),
                         p.chain_length, p.chain_steps, p.sy_order, _run_params(p))


def build_npt_nose_hoover(p: NoseHooverNPTParams, ctx) -> NoseHooverNPT:
    pressure = None if p.pressure_gpa is None else float(gpa_to_internal(p.pressure_gpa))
    return NoseHooverNPT(float(ps_to_internal(p.timestep_fs / 1000)), float(ps_to_internal(p.tau_t_ps)),
                         p.chain_length, p.chain_steps, p.sy_order, _run_params(p),
                         float(ps_to_internal(p.tau_p_ps)), pressure, p.couple)


