"""Embedded-atom method (EAM) from LAMMPS tables: `eam` (funcfl), `eam/alloy` (setfl), `eam/fs`.

    E = Σ_i F_α(ρ_i) + ½ Σ_{i≠j} φ_αβ(r_ij),    ρ_i = Σ_{j≠i} ρ_βα(r_ij)

with α the species of i and β that of j.  For `eam` and `eam/alloy` the density depends on the
contributing atom only, ρ_βα = ρ_β; `eam/fs` (Finnis–Sinclair) tabulates one density per pair
(Daw & Baskes, PRB 29, 6443 (1984); LAMMPS `pair_style eam` documentation).

Tables and their interpolation follow LAMMPS (`pair_eam.cpp`, `interpolate()`): values on the
uniform grids ρ_k = k·Δρ and r_k = k·Δr (k = 0, 1, ...), joined by cubic Hermite pieces whose knot
slopes come from a 5-point finite-difference stencil.  The result is C¹ (smooth forces), the
slopes are *linear in the table values*, and the same numbers give the same energies in LAMMPS.
Because the slopes are recomputed from the values inside `energy` (an O(table) stencil, cheap
next to the pair sum), the trainable leaves are the table values themselves:
`embedding` F(ρ_k), `density` ρ(r_k) and `rphi` r·φ(r_k); a fitted model stays C¹ and can be
written back with `write_eam` and used in LAMMPS unchanged.  The pair term is tabulated as
r·φ(r) (the setfl convention) and divided by r after interpolation, as LAMMPS does.  Beyond the
last ρ knot F continues linearly with its end slope (LAMMPS); beyond the last r knot the
tables are held constant up to the file's cutoff (LAMMPS).

Units: eV, Å; ρ is in the file's (arbitrary) density unit.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal, Optional

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fusepot.core.interfaces import Potential
from fusepot.core.neighbors import NeighborList
from fusepot.core.system import Configuration

#: funcfl stores an effective charge Z(r) with φ(r) = 27.2·0.529·Z_i(r) Z_j(r) / r (Hartree·Bohr in
#: LAMMPS' rounded constants; ASE uses the exact 14.39964 eV·Å, 0.08 % larger).
FUNCFL_HARTREE_BOHR = 27.2 * 0.529

EAMFormat = Literal["eam", "alloy", "fs"]
_MIN_POINTS = 5  # the slope stencil needs five knots


# ---------------------------------------------------------------------------------------------
# Tables on the host
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class EAMTables:
    """Host-side (numpy) EAM tables in file element order, LAMMPS setfl conventions.

    embedding (E, n_rho): F(ρ_k) in eV at ρ_k = k·drho.
    density (E, K, n_r): ρ_βα(r_k) contributed by element β (axis 0) to a host α (axis 1);
        K = 1 for eam/alloy (host-independent), K = E for eam/fs.
    rphi (E, E, n_r): r·φ(r) in eV·Å at r_k = k·dr (symmetric).
    """

    elements: list[str]
    numbers: list[int]
    masses: list[float]
    drho: float
    dr: float
    cutoff: float
    embedding: np.ndarray
    density: np.ndarray
    rphi: np.ndarray
    lattice: list[tuple[float, str]] = dataclasses.field(default_factory=list)  # (a, type) per element
    comments: list[str] = dataclasses.field(default_factory=list)

    @property
    def finnis_sinclair(self) -> bool:
        return self.density.shape[1] > 1

    def select(self, species: list[str], source: str = "") -> "EAMTables":
        """Tables re-ordered (and sub-set) to `species`, the type-index order of fusepot."""
        missing = [s for s in species if s not in self.elements]
        if missing:
            raise ValueError(f"EAM file {source or '(tables)'}: species {missing} not in the file; "
                             f"it provides elements {self.elements}")
        idx = [self.elements.index(s) for s in species]
        dens = self.density[idx][:, idx] if self.density.shape[1] > 1 else self.density[idx]
        return dataclasses.replace(
            self, elements=list(species), numbers=[self.numbers[i] for i in idx],
            masses=[self.masses[i] for i in idx], embedding=self.embedding[idx], density=dens,
            rphi=self.rphi[idx][:, idx], lattice=[self.lattice[i] for i in idx] if self.lattice else [])


class _Reader:
    """Line-aware token reader that reports file, line and section on errors."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.lines = path.read_text().splitlines()
        except UnicodeDecodeError as e:
            raise ValueError(f"EAM file {path}: not a text file ({e})") from None
        self.pos = 0  # index of the next unread line

    def fail(self, msg: str, line: Optional[int] = None):
        where = f", line {line}" if line is not None else ""
        raise ValueError(f"EAM file {self.path}{where}: {msg}")

    def line(self, section: str) -> tuple[list[str], int]:
        while self.pos < len(self.lines) and not self.lines[self.pos].split():
            self.pos += 1
        if self.pos >= len(self.lines):
            self.fail(f"file ends before {section} (after line {len(self.lines)})")
        self.pos += 1
        return self.lines[self.pos - 1].split(), self.pos

    def numbers(self, tokens, lineno, kinds, section):
        if len(tokens) < len(kinds):
            self.fail(f"{section}: expected {len(kinds)} values, got {len(tokens)}: {' '.join(tokens)!r}", lineno)
        out = []
        for tok, kind in zip(tokens, kinds):
            try:
                out.append(kind(float(tok)) if kind is int and "." in tok else kind(tok))
            except ValueError:
                self.fail(f"{section}: cannot read {tok!r} as {kind.__name__}", lineno)
        return out

    def values(self, n: int, section: str) -> np.ndarray:
        """n floats spread over whole lines (LAMMPS next_dvector)."""
        out: list[float] = []
        start = None
        while len(out) < n:
            if self.pos >= len(self.lines):
                if start is None:
                    self.fail(f"file ends before {section} (after line {len(self.lines)})")
                self.fail(f"file ends in {section} (section from line {start}): got {len(out)} of {n} values")
            lineno = self.pos + 1
            toks = self.lines[self.pos].split()
            self.pos += 1
            start = start or lineno
            for t in toks:
                try:
                    out.append(float(t.replace("D", "e").replace("d", "e")))
                except ValueError:
                    self.fail(f"{section} (section from line {start}): cannot read {t!r} as a number", lineno)
            if len(out) > n:
                self.fail(f"{section} (section from line {start}): {len(out) - n} value(s) more than the "
                          f"{n} expected end on this line", lineno)
        a = np.asarray(out, dtype=np.float64)
        if not np.all(np.isfinite(a)):
            self.fail(f"{section} (section from line {start}): non-finite values", start)
        return a

    def finish(self, form: str):
        rest = [k + 1 for k in range(self.pos, len(self.lines)) if self.lines[k].split()]
        if rest:
            self.fail(f"unexpected data after the last {form} section (is the format right? "
                      "eam/fs files carry one density per element pair)", rest[0])


def _grid_line(rd: _Reader, section: str):
    toks, ln = rd.line(section)
    nrho, drho, nr, dr, cut = rd.numbers(toks, ln, [int, float, int, float, float], section)
    if nrho < _MIN_POINTS or nr < _MIN_POINTS:
        rd.fail(f"{section}: need at least {_MIN_POINTS} points per table (Nrho={nrho}, Nr={nr})", ln)
    if not (drho > 0 and dr > 0 and cut > 0):
        rd.fail(f"{section}: drho, dr and cutoff must be positive (got {drho}, {dr}, {cut})", ln)
    return nrho, drho, nr, dr, cut


def read_funcfl(path) -> EAMTables:
    """LAMMPS `pair_style eam` (funcfl, one element): F(ρ), Z(r), ρ(r); r·φ = 27.2·0.529·Z²."""
    from ase.data import chemical_symbols

    rd = _Reader(Path(path))
    comments = rd.lines[:1]
    rd.pos = 1
    toks, ln = rd.line("the element line 'Z mass a lattice'")
    z, mass = rd.numbers(toks, ln, [int, float], "element line 'Z mass a lattice'")
    if not 0 < z < len(chemical_symbols):
        rd.fail(f"element line: atomic number {z} is not an element", ln)
    lat = (float(toks[2]), toks[3]) if len(toks) >= 4 else (0.0, "")
    nrho, drho, nr, dr, cut = _grid_line(rd, "grid line 'Nrho drho Nr dr cutoff'")
    el = chemical_symbols[z]
    emb = rd.values(nrho, f"F(rho) of {el}")
    zr = rd.values(nr, f"Z(r) of {el}")
    dens = rd.values(nr, f"rho(r) of {el}")
    rd.finish("funcfl")
    return EAMTables([el], [z], [mass], drho, dr, cut, emb[None], dens[None, None],
                     (FUNCFL_HARTREE_BOHR * zr * zr)[None, None], [lat], comments)


def read_setfl(path, finnis_sinclair: bool = False) -> EAMTables:
    """LAMMPS `eam/alloy` (setfl) or, with finnis_sinclair, `eam/fs` tables."""
    rd = _Reader(Path(path))
    comments = rd.lines[:3]
    if len(rd.lines) < 3:
        rd.fail("file ends inside the three comment lines")
    rd.pos = 3
    toks, ln = rd.line("the elements line 'N el_1 ... el_N'")
    (n_el,) = rd.numbers(toks, ln, [int], "elements line 'N el_1 ... el_N'")
    elements = toks[1:1 + n_el]
    if n_el < 1 or len(elements) != n_el:
        rd.fail(f"elements line: N = {n_el} but {len(toks) - 1} element name(s) follow", ln)
    if len(set(elements)) != n_el:
        rd.fail(f"elements line: repeated element in {elements}", ln)
    nrho, drho, nr, dr, cut = _grid_line(rd, "grid line 'Nrho drho Nr dr cutoff'")
    k = n_el if finnis_sinclair else 1
    emb = np.zeros((n_el, nrho))
    dens = np.zeros((n_el, k, nr))
    numbers, masses, lattice = [], [], []
    for a, el in enumerate(elements):
        toks, ln = rd.line(f"element line of {el}")
        z, m = rd.numbers(toks, ln, [int, float], f"element line of {el} 'Z mass a lattice'")
        numbers.append(z)
        masses.append(m)
        try:
            lattice.append((float(toks[2]), toks[3]) if len(toks) >= 4 else (0.0, ""))
        except ValueError:
            lattice.append((0.0, toks[3] if len(toks) >= 4 else ""))
        emb[a] = rd.values(nrho, f"F(rho) of {el}")
        for b in range(k):
            label = f"rho_{el}->{elements[b]}(r)" if finnis_sinclair else f"rho(r) of {el}"
            dens[a, b] = rd.values(nr, label)
    rphi = np.zeros((n_el, n_el, nr))
    for a in range(n_el):
        for b in range(a + 1):
            rphi[a, b] = rphi[b, a] = rd.values(nr, f"r*phi(r) of {elements[a]}-{elements[b]}")
    rd.finish("eam/fs" if finnis_sinclair else "eam/alloy")
    return EAMTables(elements, numbers, masses, drho, dr, cut, emb, dens, rphi, lattice, comments)


def detect_format(path) -> EAMFormat:
    name = str(path).lower()
    if name.endswith(".fs"):
        return "fs"
    if name.endswith((".alloy", ".setfl")):
        return "alloy"
    if name.endswith(".eam"):
        return "eam"
    raise ValueError(f"EAM file {path}: cannot tell the format from the name (expected .eam, .eam.alloy or "
                     f".eam.fs); set format: eam | alloy | fs")


def read_eam(path, format: Optional[EAMFormat] = None) -> EAMTables:
    """Read a LAMMPS EAM file; `format` None = from the extension."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"EAM file {path} not found")
    form = format or detect_format(path)
    if form == "eam":
        return read_funcfl(path)
    if form in ("alloy", "fs"):
        return read_setfl(path, finnis_sinclair=form == "fs")
    raise ValueError(f"EAM file {path}: unknown format {form!r} (eam, alloy or fs)")


def write_eam(path, tables: EAMTables, format: Optional[Literal["alloy", "fs"]] = None,
              numformat: str = "%.16e") -> None:
    """Write tables as a LAMMPS setfl (`alloy`) or `fs` file (default: fs iff densities are per pair)."""
    form = format or ("fs" if tables.density.shape[1] > 1 else "alloy")
    n = len(tables.elements)
    if form == "alloy" and tables.density.shape[1] > 1:
        raise ValueError("write_eam: per-pair (Finnis-Sinclair) densities need format='fs'")
    nr, nrho = tables.rphi.shape[-1], tables.embedding.shape[-1]
    com = (list(tables.comments) + ["", "", ""])[:3] if tables.comments else ["written by fusepot", "", ""]
    out = [c.replace("\n", " ") or "-" for c in com]
    out.append(f"{n} " + " ".join(tables.elements))
    out.append(f"{nrho} {float(tables.drho)!r} {nr} {float(tables.dr)!r} {float(tables.cutoff)!r}")

    def col(a):
        out.extend(numformat % v for v in np.ravel(a))

    for a in range(n):
        lat = tables.lattice[a] if tables.lattice else (0.0, "fcc")
        out.append(f"{int(tables.numbers[a])} {float(tables.masses[a])!r} {float(lat[0])!r} {lat[1] or 'fcc'}")
        col(tables.embedding[a])
        for b in range(n if form == "fs" else 1):
            col(tables.density[a, b if tables.density.shape[1] > 1 else 0])
    for a in range(n):
        for b in range(a + 1):
            col(tables.rphi[a, b])
    Path(path).write_text("\n".join(out) + "\n")


# ---------------------------------------------------------------------------------------------
# Interpolation in jax
# ---------------------------------------------------------------------------------------------

def knot_slopes(f):
    """LAMMPS knot slopes (per grid step) along the last axis: 5-point stencil, one-sided ends."""
    inner = ((f[..., :-4] - f[..., 4:]) + 8.0 * (f[..., 3:-1] - f[..., 1:-3])) / 12.0
    return jnp.concatenate([f[..., 1:2] - f[..., 0:1], 0.5 * (f[..., 2:3] - f[..., 0:1]), inner,
                            0.5 * (f[..., -1:] - f[..., -3:-2]), f[..., -1:] - f[..., -2:-1]], axis=-1)


def _hermite(values, slopes, rows, x, step, extrapolate_linear: bool):
    """Evaluate the C¹ Hermite interpolant of `values[rows]` (knots at k·step) at x.

    rows: a tuple of integer index arrays selecting one table per x.  Below the grid the first
    cubic piece continues; above it, the end value is held (r tables) or continued linearly
    with the end slope (F(ρ), `extrapolate_linear`), as in LAMMPS.
    """
    n = values.shape[-1]
    u = x / step
    k = jnp.clip(jnp.floor(u), 0, n - 2).astype(jnp.int32)
    t = jnp.minimum(u - k, 1.0)
    y0, y1 = values[rows + (k,)], values[rows + (k + 1,)]
    m0, m1 = slopes[rows + (k,)], slopes[rows + (k + 1,)]
    dy = y1 - y0
    val = y0 + t * (m0 + t * ((3.0 * dy - 2.0 * m0 - m1) + t * (m0 + m1 - 2.0 * dy)))
    if extrapolate_linear:
        val = val + m1 * jnp.maximum(u - (n - 1), 0.0)
    return val


class EAM(Potential):
    """Tabulated EAM (see the module docstring for the functional form and the spline).

    Trainable leaves (table values on uniform grids, species in fusepot type order):
    `embedding` (S, n_ρ) F(kΔρ) in eV; `density` (S, K, n_r) ρ_βα(kΔr), source β first, K = S for
    eam/fs and 1 otherwise; `rphi` (S, S, n_r) r·φ(kΔr) in eV·Å (symmetrised on use).
    """

    embedding: jnp.ndarray
    density: jnp.ndarray
    rphi: jnp.ndarray
    drho: float = eqx.field(static=True)
    dr: float = eqx.field(static=True)
    r_cut: float = eqx.field(static=True)
    elements: tuple = eqx.field(static=True, default=())
    masses: tuple = eqx.field(static=True, default=())  # amu, from the file

    @classmethod
    def from_tables(cls, tables: EAMTables, species: Optional[list[str]] = None, dtype=None) -> "EAM":
        if species:
            tables = tables.select(list(species))
        dtype = dtype or jnp.asarray(0.0).dtype
        return cls(jnp.asarray(tables.embedding, dtype), jnp.asarray(tables.density, dtype),
                   jnp.asarray(tables.rphi, dtype), float(tables.drho), float(tables.dr), float(tables.cutoff),
                   tuple(tables.elements), tuple(float(m) for m in tables.masses))

    def to_tables(self, numbers: Optional[list[int]] = None) -> EAMTables:
        """Host tables of the (possibly trained) model, for `write_eam`."""
        from ase.data import atomic_numbers

        nums = numbers or [atomic_numbers.get(e, 0) for e in self.elements]
        rphi = np.asarray(self.rphi, np.float64)
        return EAMTables(list(self.elements), nums, list(self.masses), self.drho, self.dr, self.r_cut,
                         np.asarray(self.embedding, np.float64), np.asarray(self.density, np.float64),
                         0.5 * (rphi + rphi.swapaxes(0, 1)))

    @property
    def cutoff(self) -> float:
        return self.r_cut

    @property
    def finnis_sinclair(self) -> bool:
        return self.density.shape[1] > 1

    def electron_density(self, conf: Configuration, nbrs: NeighborList):
        """Host density ρ_i per atom (zeros for padded atoms)."""
        return self._terms(conf, nbrs)[0]

    def _terms(self, conf: Configuration, nbrs: NeighborList):
        d = nbrs.vectors(conf.positions, conf.box)
        r2 = jnp.sum(d * d, axis=-1)
        s, t = nbrs.senders, nbrs.receivers
        # lists include the skin: keep r < cutoff; padded atoms neither give nor receive
        inside = nbrs.mask & (r2 < self.r_cut ** 2) & conf.mask[s] & conf.mask[t]
        r = jnp.sqrt(jnp.where(inside, r2, (0.5 * self.r_cut) ** 2))  # safe sqrt on masked slots
        si, sj = conf.species[s], conf.species[t]
        host = si if self.finnis_sinclair else jnp.zeros_like(si)
        rho_pair = _hermite(self.density, knot_slopes(self.density), (sj, host), r, self.dr, False)
        rho = jax.ops.segment_sum(jnp.where(inside, rho_pair, 0.0), s, num_segments=conf.n_atoms)
        rphi = 0.5 * (self.rphi + jnp.swapaxes(self.rphi, 0, 1))
        phi = _hermite(rphi, knot_slopes(rphi), (si, sj), r, self.dr, False) / r
        pair = 0.5 * jnp.sum(jnp.where(inside, phi, 0.0))  # each pair is listed twice
        return jnp.where(conf.mask, rho, 0.0), pair

    def energy(self, conf: Configuration, nbrs: NeighborList):
        rho, pair = self._terms(conf, nbrs)
        f = _hermite(self.embedding, knot_slopes(self.embedding), (conf.species,), rho, self.drho, True)
        return jnp.sum(jnp.where(conf.mask, f, 0.0)) + pair


class EAMParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    file: str = Field(..., description="LAMMPS EAM file; relative paths are resolved against the spec's folder")
    format: Optional[EAMFormat] = Field(
        None, description="eam (funcfl), alloy (setfl) or fs (Finnis-Sinclair); default from the extension "
                          "(.eam, .eam.alloy, .eam.fs)")


def build_eam(p: EAMParams, ctx) -> EAM:
    path = Path(p.file).expanduser()
    if not path.is_absolute():
        path = Path(ctx.spec_dir) / path
    tables = read_eam(path, p.format)
    species = list(ctx.species) or list(tables.elements)
    tables = tables.select(species, str(path))
    return EAM.from_tables(tables, dtype=ctx.dtype)
