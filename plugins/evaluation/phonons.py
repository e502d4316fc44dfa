"""Harmonic phonons of any fusepot potential: phonopy finite displacements through the ASE calculator.

phonopy displaces each symmetry-inequivalent atom of a supercell by ±`displacement` (Å), the
calculator gives the forces, and phonopy builds the force constants, the dispersion along a
path of high-symmetry points and the density of states (DOS) on a q-point mesh.

Conventions:
- q-points are in reduced coordinates of the reciprocal lattice of the primitive cell
  (`atoms`' cell unless `primitive_matrix` is given); special points and their letters are
  ASE's for that cell (`ase.Atoms.cell.bandpath`): hcp G, M, K, A, L, H; fcc G, X, W, K, L, U;
  bcc G, H, N, P.  Paths use ASE's string notation: "GMKGA", commas break the path ("GXWKGL,UX").
- frequencies in THz; imaginary modes (unstable structures) are returned as negative numbers.
- path distances are phonopy's: cumulative |Δq| in 1/Å without the 2π factor.
- the DOS is normalised to unit area (density per mode, 1/THz): phonopy's total DOS divided
  by the number of modes per primitive cell, 3·n_atoms.

Defaults follow the titanium DiffTRe paper (hcp Ti: 5×5×3 supercell of the 2-atom cell,
0.01 Å displacements, path Γ–M–K–Γ–A).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

HCP_PATH = "GMKGA"
HCP_SUPERCELL = (5, 5, 3)
DEFAULT_DISPLACEMENT = 0.01  # Å

ArrayPair = tuple[Sequence[float], Sequence[float]]


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PhononDispersion:
    """Frequencies along a path of straight segments between special points."""

    distances: np.ndarray  # (n_q,) cumulative path length, 1/Å (no 2π)
    frequencies: np.ndarray  # (n_q, n_bands) THz, imaginary modes negative
    qpoints: np.ndarray  # (n_q, 3) reduced coordinates
    segments: list[tuple[int, int]]  # [start, stop) rows of each segment
    segment_labels: list[tuple[str, str]]  # (start, end) label of each segment, "Γ" for G

    @property
    def ticks(self) -> tuple[np.ndarray, list[str]]:
        """Tick positions and labels for a plot; a path break shows as "A|L"."""
        pos, lab = [], []
        for k, ((a, b), (la, lb)) in enumerate(zip(self.segments, self.segment_labels)):
            if k == 0:
                pos.append(self.distances[a]), lab.append(la)
            elif self.segment_labels[k - 1][1] != la:
                lab[-1] = f"{lab[-1]}|{la}"
            pos.append(self.distances[b - 1]), lab.append(lb)
        return np.asarray(pos), lab

    def segment_distance(self, segment: int, fraction) -> np.ndarray:
        """Path coordinate of the point a `fraction` (0..1) along `segment` (to place measured
        dispersion points, usually given as reduced wave vector ζ along a direction)."""
        a, b = self.segments[segment]
        f = np.asarray(fraction, dtype=float)
        if np.any((f < 0) | (f > 1)):
            raise ValueError(f"fraction must lie in [0, 1], got {f}")
        return self.distances[a] + f * (self.distances[b - 1] - self.distances[a])


@dataclass(frozen=True)
class PhononDOS:
    frequencies: np.ndarray  # (n,) THz
    density: np.ndarray  # (n,) 1/THz, unit area
    n_modes: int  # 3 × atoms per primitive cell: multiply `density` by it for states per cell


@dataclass
class PhononResult:
    dispersion: PhononDispersion
    dos: Optional[PhononDOS]
    phonopy: Any = field(repr=False)  # the phonopy.Phonopy object (force constants, thermal properties...)


# ---------------------------------------------------------------------------------------------
# Computation
# ---------------------------------------------------------------------------------------------

def _to_phonopy_atoms(atoms):
    from phonopy.structure.atoms import PhonopyAtoms

    return PhonopyAtoms(symbols=atoms.get_chemical_symbols(), cell=np.asarray(atoms.cell.array),
                        scaled_positions=atoms.get_scaled_positions(wrap=False), masses=atoms.get_masses())


def _to_ase(cell):
    from ase import Atoms

    return Atoms(symbols=cell.symbols, cell=cell.cell, scaled_positions=cell.scaled_positions, masses=cell.masses,
                 pbc=True)


def force_constants(atoms, calculator, supercell_matrix=HCP_SUPERCELL, displacement: float = DEFAULT_DISPLACEMENT,
                    primitive_matrix=None, symmetrize: bool = True, symprec: float = 1e-5):
    """A phonopy.Phonopy object with force constants from finite displacements.

    atoms: the unit cell (ASE Atoms, periodic), ideally relaxed: residual forces bias the
        force constants.
    calculator: an ASE calculator (e.g. `fusepot.core.calculator.FusepotCalculator`); one
        calculator serves all displaced supercells (same atom count: its neighbor list is reused).
    supercell_matrix: 3 integers (diagonal) or a 3×3 integer matrix.
    primitive_matrix: phonopy's primitive matrix (None: `atoms` is the primitive cell).
    symmetrize: impose the translational sum rule and index symmetry on the force constants
        (phonopy `symmetrize_force_constants`), removing O(displacement²) noise.
    """
    from phonopy import Phonopy

    if not all(atoms.pbc):
        raise ValueError("phonons need a cell periodic in all three directions")
    if displacement <= 0:
        raise ValueError(f"displacement must be > 0 Å, got {displacement}")
    sc = np.asarray(supercell_matrix, dtype=int)
    if sc.shape not in ((3,), (3, 3)):
        raise ValueError(f"supercell_matrix must be 3 integers or a 3×3 matrix, got {supercell_matrix}")
    phonon = Phonopy(_to_phonopy_atoms(atoms), supercell_matrix=np.diag(sc) if sc.ndim == 1 else sc,
                     primitive_matrix=primitive_matrix, symprec=symprec)
    phonon.generate_displacements(distance=displacement)
    forces = []
    for cell in phonon.supercells_with_displacements:
        sup = _to_ase(cell)
        sup.calc = calculator
        f = np.asarray(sup.get_forces(), dtype=float)
        forces.append(f - f.mean(axis=0))  # exact potentials give zero drift; float32 ones do not
    phonon.forces = np.asarray(forces)
    phonon.produce_force_constants()
    if symmetrize:
        phonon.symmetrize_force_constants()
    return phonon


def _primitive_cell(phonon) -> np.ndarray:
    return np.asarray(phonon.primitive.cell)


def _parse_path(path: Union[str, Sequence[Sequence[str]]]) -> list[list[str]]:
    if isinstance(path, str):
        from ase.dft.kpoints import parse_path_string

        return parse_path_string(path)
    return [list(p) for p in path]


def dispersion(phonon, path: Union[str, Sequence[Sequence[str]]] = HCP_PATH, npoints: int = 51,
               special_points: Optional[Mapping[str, Sequence[float]]] = None) -> PhononDispersion:
    """Frequencies along `path` (ASE string like "GMKGA" or [["G", "M", "K"], ["A", "L"]]).

    Letters are looked up in `special_points` first, then in ASE's special points of the
    primitive cell.  `npoints` q-points per segment (ends included).
    """
    from ase.cell import Cell

    if npoints < 2:
        raise ValueError("npoints must be >= 2")
    known = {k: np.asarray(v, float) for k, v in Cell(_primitive_cell(phonon)).bandpath(npoints=0).special_points.items()}
    known.update({k: np.asarray(v, float) for k, v in (special_points or {}).items()})
    branches = _parse_path(path)
    seg_q, seg_lab, connections = [], [], []
    for branch in branches:
        if len(branch) < 2:
            raise ValueError(f"path {path!r}: every branch needs at least two points")
        for a, b in zip(branch[:-1], branch[1:]):
            for name in (a, b):
                if name not in known:
                    raise ValueError(f"path {path!r}: unknown special point {name!r}; known: {sorted(known)} "
                                     f"(pass special_points={{...}} in reduced coordinates)")
            seg_q.append(np.linspace(known[a], known[b], npoints))
            seg_lab.append(tuple("Γ" if x == "G" else x for x in (a, b)))
            connections.append(True)
        connections[-1] = False
    phonon.run_band_structure(seg_q, path_connections=connections, labels=None)
    bs = phonon.band_structure
    dist = [np.asarray(d) for d in bs.distances]
    freq = [np.asarray(f) for f in bs.frequencies]
    segments, start = [], 0
    for d in dist:
        segments.append((start, start + len(d)))
        start += len(d)
    return PhononDispersion(np.concatenate(dist), np.concatenate(freq), np.concatenate([np.asarray(q) for q in bs.qpoints]),
                            segments, seg_lab)


def density_of_states(phonon, mesh: Union[float, Sequence[int]] = 50.0, sigma: Optional[float] = None,
                      freq_pitch: float = 0.02) -> PhononDOS:
    """Phonon DOS on a Γ-centred q mesh (tetrahedron method; Gaussian of width `sigma` THz if given).

    mesh: 3 integers, or a length in Å (phonopy: n_i ≈ length · |b_i|).  The frequency grid spans
    all mesh frequencies with a margin, so the density integrates to 1.
    """
    phonon.run_mesh(mesh, is_gamma_center=True)
    freqs = np.asarray(phonon.mesh.frequencies)
    margin = 5 * (sigma or 0.0) + 5 * freq_pitch
    phonon.run_total_dos(sigma=sigma, freq_min=min(0.0, float(freqs.min())) - margin,
                         freq_max=float(freqs.max()) + margin, freq_pitch=freq_pitch,
                         use_tetrahedron_method=sigma is None)
    d = phonon.total_dos
    n_modes = 3 * len(phonon.primitive)
    return PhononDOS(np.asarray(d.frequency_points), np.asarray(d.dos) / n_modes, n_modes)


def phonons(atoms, calculator, *, supercell_matrix=HCP_SUPERCELL, displacement: float = DEFAULT_DISPLACEMENT,
            path: Union[str, Sequence[Sequence[str]]] = HCP_PATH, npoints: int = 51,
            special_points: Optional[Mapping[str, Sequence[float]]] = None,
            mesh: Union[float, Sequence[int], None] = 50.0, sigma: Optional[float] = None,
            primitive_matrix=None, symmetrize: bool = True) -> PhononResult:
    """Force constants, dispersion along `path` and DOS on `mesh` (None: no DOS) in one call."""
    phonon = force_constants(atoms, calculator, supercell_matrix, displacement, primitive_matrix, symmetrize)
    disp = dispersion(phonon, path, npoints, special_points)
    dos = density_of_states(phonon, mesh, sigma) if mesh is not None else None
    return PhononResult(disp, dos, phonon)


# ---------------------------------------------------------------------------------------------
# Plot
# ---------------------------------------------------------------------------------------------

def _unit_area(x, y) -> np.ndarray:
    area = np.trapezoid(y, x) if hasattr(np, "trapezoid") else np.trapz(y, x)
    if not area > 0:
        raise ValueError("experimental DOS has non-positive area")
    return np.asarray(y) / area


def plot_phonons(path_png, dispersion: Optional[PhononDispersion] = None, dos: Optional[PhononDOS] = None, *,
                 experimental_dispersion: Optional[ArrayPair] = None, experimental_dos: Optional[ArrayPair] = None,
                 normalize_experimental_dos: bool = True, title: Optional[str] = None, label: str = "model") -> Path:
    """Dispersion (left) and DOS (right, shared frequency axis) as a PNG; returns the path.

    experimental_dispersion: (path coordinate, frequency THz) arrays, e.g. from a CSV; place
        measured points with `PhononDispersion.segment_distance`.
    experimental_dos: (frequency THz, density) arrays; scaled to unit area unless
        `normalize_experimental_dos` is False.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if dispersion is None and dos is None:
        raise ValueError("plot_phonons: give a dispersion, a DOS or both")
    panels = [p for p in ("disp", "dos") if (dispersion if p == "disp" else dos) is not None]
    fig = Figure(figsize=(7.5 if len(panels) == 2 else 5, 4.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False,
                        gridspec_kw={"width_ratios": [3, 1][:len(panels)] if len(panels) == 2 else [1]})[0]
    ax_of = dict(zip(panels, axes))
    if dispersion is not None:
        ax = ax_of["disp"]
        for k, (a, b) in enumerate(dispersion.segments):
            ax.plot(dispersion.distances[a:b], dispersion.frequencies[a:b], color="C0", lw=1.2,
                    label=label if k == 0 else None)
        if experimental_dispersion is not None:
            x, y = (np.asarray(v, float) for v in experimental_dispersion)
            ax.plot(x, y, "o", color="C3", ms=3.5, mfc="none", label="experiment")
        pos, lab = dispersion.ticks
        ax.set_xticks(pos, lab)
        for p in pos:
            ax.axvline(p, color="0.7", lw=0.6)
        ax.axhline(0.0, color="0.7", lw=0.6)
        ax.set_xlim(pos[0], pos[-1])
        ax.set_ylabel("frequency (THz)")
        # one legend entry per source, not per band
        handles, names = ax.get_legend_handles_labels()
        uniq = dict(zip(names, handles))
        ax.legend(uniq.values(), uniq.keys(), loc="lower right", fontsize=8)
    if dos is not None:
        ax = ax_of["dos"]
        ax.plot(dos.density, dos.frequencies, color="C0", lw=1.2, label=label)
        if experimental_dos is not None:
            x, y = (np.asarray(v, float) for v in experimental_dos)
            ax.plot(_unit_area(x, y) if normalize_experimental_dos else y, x, color="C3", lw=1.2, label="experiment")
        ax.set_xlabel("DOS (1/THz)")
        ax.set_xlim(left=0)
        if dispersion is None:
            ax.set_ylabel("frequency (THz)")
        ax.legend(loc="upper right", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path_png = Path(path_png)
    fig.savefig(path_png, dpi=130)
    return path_png
