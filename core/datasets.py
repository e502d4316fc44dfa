"""Labelled DFT datasets: readers, validation, filters, splits, and padded batches.

A `Sample` is one labelled configuration in internal units (eV, Å): positions (N, 3), species
(N,) type indices into the dataset's species list of chemical symbols, box (3, 3) with rows =
lattice vectors, energy (eV per configuration), forces (N, 3) eV/Å, virial (3, 3) eV with
`has_virial` saying whether it is a label (the trainer counts the virial term only where it is),
and a relative `weight`.

Virial convention (core/mechanics.py): W = −∂U/∂ε (eV), the DeePMD/VASP convention.  ASE's
stress is σ = (1/V) ∂E/∂ε (positive = tensile), hence W = −V·σ.

Readers (`read_deepmd`, `read_ase`, `read_dataset`) validate every frame and raise
`DatasetError` naming the file and the frame.  `pad_dataset` turns a dataset into buckets of
equal-shape numpy arrays (atoms padded to the bucket's size, masked; neighbor lists built on the
host into `NeighborList` containers with a common capacity per bucket) from which `Batch`
pytrees are cut; one jitted function per bucket shape then serves every batch (vmap over the
leading sample axis).
"""
from __future__ import annotations

import fnmatch
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from . import units
from .neighbors import NeighborList
from .system import Configuration


class DatasetError(ValueError):
    """A dataset file is malformed or its labels are invalid (message names file and frame)."""


# --------------------------------------------------------------------------------------------
# samples and datasets
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Sample:
    """One labelled configuration, internal units (numpy, float64)."""

    positions: np.ndarray  # (N, 3) Å
    species: np.ndarray  # (N,) int32, index into Dataset.species
    box: np.ndarray  # (3, 3) Å, rows = lattice vectors
    energy: float  # eV per configuration
    forces: np.ndarray  # (N, 3) eV/Å
    virial: np.ndarray  # (3, 3) eV (zeros when has_virial is False)
    has_virial: bool = False
    weight: float = 1.0
    system: str = ""  # system name (path relative to the dataset root), for exclusion patterns
    source: str = ""  # file the frame came from
    frame: int = 0  # frame index within `source`

    @property
    def n_atoms(self) -> int:
        return int(self.positions.shape[0])

    @property
    def volume(self) -> float:
        return float(abs(np.linalg.det(self.box)))

    def configuration(self, dtype=None) -> Configuration:
        dtype = dtype or jnp.asarray(0.0).dtype
        return Configuration(jnp.asarray(self.positions, dtype), self.species, jnp.asarray(self.box, dtype))


@dataclass(frozen=True, eq=False)
class Dataset:
    """An ordered collection of samples sharing one species list (chemical symbols)."""

    samples: tuple[Sample, ...]
    species: tuple[str, ...]

    def __post_init__(self):
        object.__setattr__(self, "samples", tuple(self.samples))
        object.__setattr__(self, "species", tuple(self.species))

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def __getitem__(self, k):
        if isinstance(k, (int, np.integer)):
            return self.samples[k]
        if isinstance(k, slice):
            return Dataset(self.samples[k], self.species)
        return self.subset(k)

    def subset(self, indices: Iterable[int]) -> "Dataset":
        return Dataset(tuple(self.samples[int(i)] for i in indices), self.species)

    def __add__(self, other: "Dataset") -> "Dataset":
        return concatenate([self, other])

    @property
    def n_atoms(self) -> np.ndarray:
        return np.array([s.n_atoms for s in self.samples], dtype=np.int64)

    def summary(self) -> str:
        if not self.samples:
            return "0 samples"
        n = self.n_atoms
        epa = np.array([s.energy / s.n_atoms for s in self.samples])
        nv = sum(s.has_virial for s in self.samples)
        return (f"{len(self)} samples, {n.min()}–{n.max()} atoms, species {list(self.species)}, "
                f"E/atom {epa.min():.3f} … {epa.max():.3f} eV, {nv} with virial")


def concatenate(datasets: Sequence[Dataset]) -> Dataset:
    datasets = list(datasets)
    if not datasets:
        raise DatasetError("concatenate: no datasets given")
    sp = datasets[0].species
    for d in datasets[1:]:
        if d.species != sp:
            raise DatasetError(f"concatenate: species lists differ ({list(sp)} vs {list(d.species)})")
    return Dataset(tuple(itertools.chain.from_iterable(d.samples for d in datasets)), sp)


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------
def _unit_factors(energy_unit: str, length_unit: str, where: str) -> tuple[float, float]:
    try:
        eu, lu = units.canonical(energy_unit), units.canonical(length_unit)
    except ValueError as exc:
        raise DatasetError(f"{where}: {exc}") from None
    if units.dimension(eu) != "energy":
        raise DatasetError(f"{where}: energy_unit {energy_unit!r} is not an energy unit (use eV, meV or kJ/mol)")
    if units.dimension(lu) != "length":
        raise DatasetError(f"{where}: length_unit {length_unit!r} is not a length unit (use A or nm)")
    return float(units.to_internal(1.0, eu)), float(units.to_internal(1.0, lu))


def _check_sample(s: Sample, files: Optional[dict] = None) -> None:
    """Raise DatasetError naming the file (per label when `files` maps label -> file) and frame."""
    files = files or {}

    def where(name):
        return f"{files.get(name, s.source)}, frame {s.frame}"

    n = s.positions.shape[0]
    for name, arr, shape in (("positions", s.positions, (n, 3)), ("forces", s.forces, (n, 3)),
                             ("box", s.box, (3, 3)), ("virial", s.virial, (3, 3)), ("species", s.species, (n,))):
        if arr.shape != shape:
            raise DatasetError(f"{where(name)}: {name} has shape {arr.shape}, expected {shape}")
    if n == 0:
        raise DatasetError(f"{where('positions')}: configuration has no atoms")
    checks = [("positions", s.positions), ("box", s.box), ("energy", np.asarray(s.energy)), ("forces", s.forces)]
    if s.has_virial:
        checks.append(("virial", s.virial))
    for name, arr in checks:
        bad = ~np.isfinite(arr)
        if np.any(bad):
            raise DatasetError(f"{where(name)}: {name} contains NaN or inf ({int(bad.sum())} value(s))")
    vol = abs(float(np.linalg.det(s.box)))
    if not vol > 1e-6:
        raise DatasetError(f"{where('box')}: cell volume is not positive (|det box| = {vol:.3g} Å³); "
                           "fusepot needs a periodic 3D cell")
    if not (np.isfinite(s.weight) and s.weight >= 0):
        raise DatasetError(f"{where('weight')}: weight must be finite and non-negative, got {s.weight}")


def _species_indices(symbols: Sequence[str], species: Sequence[str], where: str) -> np.ndarray:
    index = {sym: i for i, sym in enumerate(species)}
    missing = sorted(set(symbols) - set(index))
    if missing:
        raise DatasetError(f"{where}: element(s) {missing} are not in the species list {list(species)}")
    return np.array([index[s] for s in symbols], dtype=np.int32)


def _matches(system: str, patterns: Sequence[str], path: Optional[Path] = None) -> bool:
    """Does a glob pattern match the system name or any component of it (or of its full path)?"""
    parts = Path(system).parts + (Path(path).resolve().parts if path is not None else ())
    return any(fnmatch.fnmatch(system, p) or any(fnmatch.fnmatch(q, p) for q in parts) for p in patterns)


# --------------------------------------------------------------------------------------------
# DeePMD npy systems
# --------------------------------------------------------------------------------------------
def find_deepmd_systems(root) -> list[Path]:
    """Folders under `root` (or `root` itself) that hold a DeePMD system (`type.raw`), sorted."""
    root = Path(root)
    if (root / "type.raw").is_file():
        return [root]
    return sorted(p.parent for p in root.rglob("type.raw"))


def read_deepmd(path, species: Sequence[str], *, type_map: Optional[Sequence[str]] = None,
                energy_unit: str = "eV", length_unit: str = "A", exclude: Sequence[str] = (),
                weight: float = 1.0) -> Dataset:
    """Read one DeePMD npy system or every system below a folder (recursively).

    species: chemical symbols in the model's type-index order.  Each system's type indices are
    mapped to symbols by its `type_map.raw`, else by `type_map`, else taken as indices into
    `species`.  Labels: energy (energy_unit per frame), force (energy_unit/length_unit), virial
    (energy_unit), box rows = lattice vectors (length_unit).  `exclude`: glob patterns matched
    against the system path relative to `path` and each component of its full path ("10_diamond").
    """
    root = Path(path)
    if not root.exists():
        raise DatasetError(f"{root}: no such file or folder")
    systems = find_deepmd_systems(root)
    if not systems:
        raise DatasetError(f"{root}: no DeePMD system (no type.raw) found")
    e_fac, l_fac = _unit_factors(energy_unit, length_unit, str(root))
    out: list[Sample] = []
    for sysdir in systems:
        name = sysdir.relative_to(root).as_posix() if sysdir != root else root.name
        if exclude and _matches(name, exclude, sysdir):
            continue
        out.extend(_read_deepmd_system(sysdir, name, species, type_map, e_fac, l_fac, weight))
    return Dataset(tuple(out), tuple(species))


def _load(f: Path, frame_shape: tuple[int, ...], n_frames: Optional[int]) -> np.ndarray:
    """Load a per-frame label array and check its shape (message names the file and frames)."""
    try:
        a = np.load(f, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - report which file
        raise DatasetError(f"{f}: cannot read ({exc})") from exc
    size = int(np.prod(frame_shape))
    if a.ndim == 1 and size == 1:
        a = a[:, None]
    if a.ndim == 1 and n_frames in (None, 1) and a.size == size:
        a = a[None]
    if a.ndim != 2 or a.shape[1] != size:
        per = f"{frame_shape[0]} atoms × 3" if len(frame_shape) == 2 and frame_shape != (3, 3) else str(size)
        raise DatasetError(f"{f}: shape {a.shape}, but every frame needs {per} = {size} values "
                           f"(expected (n_frames, {size}))")
    if n_frames is not None and a.shape[0] != n_frames:
        raise DatasetError(f"{f}: {a.shape[0]} frames, but box.npy of the same set has {n_frames} "
                           f"(no labels from frame {min(a.shape[0], n_frames)} on)")
    return a.astype(np.float64).reshape((a.shape[0],) + frame_shape)


def _read_deepmd_system(sysdir: Path, name: str, species, type_map, e_fac, l_fac, weight) -> list[Sample]:
    tfile = sysdir / "type.raw"
    try:
        types = np.array(tfile.read_text().split(), dtype=np.int64)
    except ValueError as exc:
        raise DatasetError(f"{tfile}: type indices must be integers ({exc})") from None
    if types.size == 0:
        raise DatasetError(f"{tfile}: no atoms")
    mfile = sysdir / "type_map.raw"
    tmap = mfile.read_text().split() if mfile.is_file() else (list(type_map) if type_map else list(species))
    if types.min() < 0 or types.max() >= len(tmap):
        raise DatasetError(f"{tfile}: type index {int(types.max())} has no symbol in type map {tmap}"
                           f"{' (' + str(mfile) + ')' if mfile.is_file() else ''}")
    symbols = [tmap[t] for t in types]
    spec_idx = _species_indices(symbols, species, str(tfile))
    n = types.size
    sets = sorted(p for p in sysdir.glob("set.*") if p.is_dir())
    if not sets:
        raise DatasetError(f"{sysdir}: no set.* folder")
    out = []
    for sd in sets:
        for req in ("box", "coord", "energy", "force"):
            if not (sd / f"{req}.npy").is_file():
                what = "forces are required for training" if req == "force" else "required"
                raise DatasetError(f"{sd / (req + '.npy')}: missing ({what})")
        box = _load(sd / "box.npy", (3, 3), None)
        nf = box.shape[0]
        coord = _load(sd / "coord.npy", (n, 3), nf)
        energy = _load(sd / "energy.npy", (1,), nf)[:, 0]
        force = _load(sd / "force.npy", (n, 3), nf)
        vfile = sd / "virial.npy"
        virial = _load(vfile, (3, 3), nf) if vfile.is_file() else None
        files = {"positions": sd / "coord.npy", "box": sd / "box.npy", "energy": sd / "energy.npy",
                 "forces": sd / "force.npy", "virial": vfile, "species": tfile}
        for k in range(nf):
            s = Sample(positions=coord[k] * l_fac, species=spec_idx, box=box[k] * l_fac, energy=float(energy[k]) * e_fac,
                       forces=force[k] * (e_fac / l_fac),
                       virial=(virial[k] * e_fac) if virial is not None else np.zeros((3, 3)),
                       has_virial=virial is not None, weight=float(weight), system=name, source=str(sd), frame=k)
            _check_sample(s, files)
            out.append(s)
    return out


# --------------------------------------------------------------------------------------------
# ASE-readable files
# --------------------------------------------------------------------------------------------
def read_ase(path, species: Sequence[str], *, index: str = ":", format: Optional[str] = None,
             energy_unit: str = "eV", length_unit: str = "A", weight: float = 1.0,
             name: Optional[str] = None) -> Dataset:
    """Read every frame of an ASE-readable file (extxyz, VASP OUTCAR/vasprun.xml, ...).

    Labels come from the attached calculator results (energy, forces, stress) as ASE reports
    them (ASE converts OUTCAR to eV, Å); a `virial` entry in `atoms.info` (eV, 3×3 or 9 values,
    extxyz from GPUMD/NEP) is used as is, otherwise a stress gives W = −V·σ.  energy_unit and
    length_unit rescale files whose numbers are in other units.
    """
    import ase.io

    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"{p}: no such file")
    e_fac, l_fac = _unit_factors(energy_unit, length_unit, str(p))
    try:
        frames = ase.io.read(str(p), index=index, format=format)
    except Exception as exc:  # noqa: BLE001 - report which file
        raise DatasetError(f"{p}: ASE cannot read it ({type(exc).__name__}: {exc})") from exc
    if not isinstance(frames, list):
        frames = [frames]
    system = name or p.name
    out = []
    for k, atoms in enumerate(frames):
        where = f"{p}, frame {k}"
        if not all(atoms.pbc):
            raise DatasetError(f"{where}: fusepot needs a periodic cell in all three directions (pbc={atoms.pbc})")
        res = dict(atoms.calc.results) if atoms.calc is not None else {}
        if "energy" not in res and "free_energy" not in res:
            raise DatasetError(f"{where}: no energy label")
        if "forces" not in res:
            raise DatasetError(f"{where}: no forces label (forces are required for training)")
        energy = float(res.get("energy", res.get("free_energy")))
        forces = np.asarray(res["forces"], dtype=np.float64)
        box = np.asarray(atoms.cell.array, dtype=np.float64)
        vol = abs(np.linalg.det(box))
        virial, has_v = np.zeros((3, 3)), False
        if "virial" in atoms.info:
            v = np.asarray(atoms.info["virial"], dtype=np.float64)
            if v.size != 9:
                raise DatasetError(f"{where}: virial has {v.size} values, expected 9")
            virial, has_v = v.reshape(3, 3) * e_fac, True
        elif "stress" in res:
            st = np.asarray(res["stress"], dtype=np.float64)
            if st.shape == (6,):  # Voigt xx yy zz yz xz xy
                xx, yy, zz, yz, xz, xy = st
                st = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
            if st.shape != (3, 3):
                raise DatasetError(f"{where}: stress has shape {st.shape}, expected (6,) or (3, 3)")
            # ASE: σ = (1/V) ∂E/∂ε  →  W = −∂E/∂ε = −V σ  (in file units: energy/length³ · length³)
            virial, has_v = -vol * st * e_fac, True
        spec_idx = _species_indices(atoms.get_chemical_symbols(), species, where)
        s = Sample(positions=np.asarray(atoms.positions, np.float64) * l_fac, species=spec_idx, box=box * l_fac,
                   energy=energy * e_fac, forces=forces * (e_fac / l_fac), virial=virial, has_virial=has_v,
                   weight=float(weight), system=system, source=str(p), frame=k)
        _check_sample(s)
        out.append(s)
    return Dataset(tuple(out), tuple(species))


def read_dataset(paths, species: Sequence[str], *, exclude: Sequence[str] = (), **kwargs) -> Dataset:
    """Read one or several paths: folders as DeePMD systems (recursive), files through ASE.

    kwargs go to the reader (energy_unit, length_unit, weight; type_map for DeePMD; format
    and index for ASE).  `exclude` patterns drop DeePMD systems and ASE files by name.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    parts = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            kw = {k: v for k, v in kwargs.items() if k not in ("format", "index")}
            parts.append(read_deepmd(p, species, exclude=exclude, **kw))
        else:
            if exclude and _matches(p.name, exclude, p):
                continue
            kw = {k: v for k, v in kwargs.items() if k != "type_map"}
            parts.append(read_ase(p, species, **kw))
    return concatenate(parts) if parts else Dataset((), tuple(species))


# --------------------------------------------------------------------------------------------
# filters and splits
# --------------------------------------------------------------------------------------------
def filter_dataset(ds: Dataset, *, max_force: Optional[float] = None,
                   energy_per_atom: Optional[tuple[Optional[float], Optional[float]]] = None,
                   exclude: Sequence[str] = (), log: Optional[Callable[[str], None]] = None) -> Dataset:
    """Drop outliers: any atom with |F_i| > max_force (eV/Å, norm of the atom's force vector),
    energy per atom outside [lo, hi] eV/atom (either bound may be None), systems matching an
    `exclude` glob pattern.  `log` receives a one-line summary of what was dropped."""
    lo, hi = energy_per_atom if energy_per_atom is not None else (None, None)
    keep, dropped = [], {"exclude": 0, "max_force": 0, "energy_per_atom": 0}
    for s in ds.samples:
        if exclude and _matches(s.system, exclude):
            dropped["exclude"] += 1
        elif max_force is not None and float(np.max(np.linalg.norm(s.forces, axis=-1))) > max_force:
            dropped["max_force"] += 1
        elif (lo is not None and s.energy / s.n_atoms < lo) or (hi is not None and s.energy / s.n_atoms > hi):
            dropped["energy_per_atom"] += 1
        else:
            keep.append(s)
    if log is not None:
        log(f"filter: kept {len(keep)} of {len(ds)} samples; dropped " +
            ", ".join(f"{v} by {k}" for k, v in dropped.items()))
    return Dataset(tuple(keep), ds.species)


def split_dataset(ds: Dataset, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> tuple[Dataset, ...]:
    """Random split into len(fractions) parts, reproducible for a given seed and sample order.

    Part k gets floor(f_k · n) samples; samples left over by rounding go to the first part.
    """
    fr = np.asarray(fractions, dtype=np.float64)
    if fr.ndim != 1 or fr.size == 0 or np.any(fr < 0) or fr.sum() > 1 + 1e-9:
        raise DatasetError(f"split fractions must be non-negative and sum to at most 1, got {list(fractions)}")
    n = len(ds)
    perm = np.random.default_rng(seed).permutation(n)
    counts = np.floor(fr * n + 1e-9).astype(int)
    if abs(fr.sum() - 1.0) < 1e-9:
        counts[0] += n - counts.sum()
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return tuple(ds.subset(np.sort(perm[bounds[k]:bounds[k + 1]])) for k in range(len(fr)))


# --------------------------------------------------------------------------------------------
# neighbor lists on the host
# --------------------------------------------------------------------------------------------
def _reach(box: np.ndarray, r: float) -> np.ndarray:
    vol = abs(np.linalg.det(box))
    a, b, c = box
    widths = vol / np.array([np.linalg.norm(np.cross(b, c)), np.linalg.norm(np.cross(c, a)),
                             np.linalg.norm(np.cross(a, b))])
    return np.ceil(r / widths).astype(int)


def _offsets(reach: np.ndarray) -> np.ndarray:
    return np.array(list(itertools.product(*[range(-int(k), int(k) + 1) for k in reach])), dtype=np.float64)


def neighbor_pairs(positions: np.ndarray, box: np.ndarray, r: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All directed pairs (i, j, n) with |r_j − r_i + n·box| < r, i≠j or n≠0 (numpy, host).

    Shifts n are in terms of the given (unwrapped) positions, as `NeighborList.vectors` expects.
    """
    positions = np.asarray(positions, np.float64)
    box = np.asarray(box, np.float64)
    frac = positions @ np.linalg.inv(box)
    wrap = np.floor(frac)
    pos_w = (frac - wrap) @ box
    images = _offsets(_reach(box, r))
    d = pos_w[None, :, None, :] - pos_w[:, None, None, :] + (images @ box)[None, None, :, :]
    r2 = np.einsum("ijkx,ijkx->ijk", d, d)
    n = positions.shape[0]
    zero = np.all(images == 0, axis=-1)
    ok = r2 < r * r
    ok &= ~((np.arange(n)[:, None, None] == np.arange(n)[None, :, None]) & zero[None, None, :])
    i, j, k = np.nonzero(ok)
    shifts = images[k] - wrap[j] + wrap[i]
    return i.astype(np.int32), j.astype(np.int32), shifts


# --------------------------------------------------------------------------------------------
# padded batches
# --------------------------------------------------------------------------------------------
class Batch(eqx.Module):
    """A batch of samples with a leading sample axis on every leaf (vmap over it).

    conf: Configuration (B, N_pad, ...) with conf.mask marking real atoms; nbrs: NeighborList
    (B, capacity) with nbrs.mask marking real pairs; sample_mask (B,) is False for filler samples
    that complete the last batch of a bucket (they carry weight 0).
    """

    conf: Configuration
    nbrs: NeighborList
    energy: jnp.ndarray  # (B,) eV
    forces: jnp.ndarray  # (B, N_pad, 3) eV/Å, zeros on padded atoms
    virial: jnp.ndarray  # (B, 3, 3) eV
    has_virial: jnp.ndarray  # (B,) bool
    weight: jnp.ndarray  # (B,) relative sample weight (0 for filler)
    sample_mask: jnp.ndarray  # (B,) bool

    @property
    def n_atoms(self):
        return jnp.sum(self.conf.mask, axis=-1)

    @property
    def size(self) -> int:
        return self.energy.shape[0]


@dataclass
class _Bucket:
    n_pad: int
    capacity: int
    images: np.ndarray  # (I, 3), common to the bucket (covers every sample's reach)
    indices: np.ndarray  # (M,) dataset indices
    arrays: dict = field(default_factory=dict)  # name -> (M, ...) numpy


@dataclass
class PaddedDataset:
    """A dataset cut into buckets of equal-shape padded arrays (see `pad_dataset`)."""

    dataset: Dataset
    cutoff: float
    skin: float
    buckets: list[_Bucket]
    dtype: object

    def __len__(self) -> int:
        return len(self.dataset)

    def n_batches(self, batch_size: int) -> int:
        return sum(math.ceil(len(b.indices) / batch_size) for b in self.buckets)

    def batches(self, batch_size: int, seed=None, shuffle: bool = False) -> Iterator[Batch]:
        """Batches of `batch_size` samples, each from one bucket; the last batch of a bucket is
        completed with weight-0 copies.  With shuffle, samples are permuted within buckets and
        the order of batches is permuted, reproducibly for `seed`."""
        rng = np.random.default_rng(seed)
        plan = []
        for bi, b in enumerate(self.buckets):
            m = len(b.indices)
            order = rng.permutation(m) if shuffle else np.arange(m)
            plan.extend((bi, order[s:s + batch_size]) for s in range(0, m, batch_size))
        if shuffle:
            plan = [plan[k] for k in rng.permutation(len(plan))]
        for bi, rows in plan:
            yield self._batch(self.buckets[bi], rows, batch_size)

    def indexed_batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, Batch]]:
        """(dataset indices of the real samples, batch) in bucket order, no shuffling."""
        for b in self.buckets:
            for start in range(0, len(b.indices), batch_size):
                rows = np.arange(start, min(start + batch_size, len(b.indices)))
                yield b.indices[rows], self._batch(b, rows, batch_size)

    def _batch(self, b: _Bucket, rows: np.ndarray, batch_size: int) -> Batch:
        real = len(rows)
        if real < batch_size:
            rows = np.concatenate([rows, np.full(batch_size - real, rows[0])])
        smask = np.arange(batch_size) < real
        a = {k: v[rows] for k, v in b.arrays.items()}
        dt = self.dtype
        conf = Configuration(jnp.asarray(a["positions"], dt), a["species"], jnp.asarray(a["box"], dt), a["atom_mask"])
        bsz = len(rows)
        nbrs = NeighborList(
            senders=jnp.asarray(a["senders"]), receivers=jnp.asarray(a["receivers"]),
            shifts=jnp.asarray(a["shifts"], dt), mask=jnp.asarray(a["pair_mask"]),
            reference_positions=jnp.asarray(a["positions"], dt), reference_box=jnp.asarray(a["box"], dt),
            overflow=jnp.asarray(a["count"] > b.capacity), count=jnp.asarray(a["count"], jnp.int32),
            images=jnp.broadcast_to(jnp.asarray(b.images, dt), (bsz,) + b.images.shape),
            cutoff=self.cutoff, skin=self.skin, minimum_image=False)
        return Batch(conf=conf, nbrs=nbrs, energy=jnp.asarray(a["energy"], dt), forces=jnp.asarray(a["forces"], dt),
                     virial=jnp.asarray(a["virial"], dt), has_virial=jnp.asarray(a["has_virial"]),
                     weight=jnp.asarray(np.where(smask, a["weight"], 0.0), dt), sample_mask=jnp.asarray(smask))


def pad_dataset(ds: Dataset, cutoff: float, *, skin: float = 0.0, buckets: Optional[Sequence[int]] = None,
                capacity: Optional[int] = None, capacity_multiple: int = 8, dtype=None,
                log: Optional[Callable[[str], None]] = None) -> PaddedDataset:
    """Pad a dataset for batched, jitted evaluation.

    buckets: ascending atom-count bounds; a sample goes to the first bucket with bound ≥ N and
    is padded to that bound (None: one bucket padded to the largest sample).  Neighbor lists
    hold every pair within cutoff + skin, counted exactly on the host, so the capacity of a
    bucket (its largest pair count rounded up to `capacity_multiple`) always fits.  A requested
    `capacity` that is too small is detected and grown (reported through `log`), never
    truncated; the resulting `NeighborList.overflow` flags are False by construction.
    """
    if len(ds) == 0:
        raise DatasetError("pad_dataset: the dataset is empty")
    dtype = dtype or jnp.asarray(0.0).dtype
    n = ds.n_atoms
    bounds = sorted(set(int(x) for x in buckets)) if buckets else [int(n.max())]
    if bounds[-1] < n.max():
        bounds.append(int(n.max()))
    which = np.searchsorted(np.asarray(bounds), n)  # first bound ≥ N
    r = cutoff + skin
    out = []
    for bi, bound in enumerate(bounds):
        idx = np.nonzero(which == bi)[0]
        if idx.size == 0:
            continue
        pairs = [neighbor_pairs(ds.samples[k].positions, ds.samples[k].box, r) for k in idx]
        counts = np.array([p[0].size for p in pairs])
        need = int(max(1, counts.max()))
        cap = int(math.ceil(need / capacity_multiple) * capacity_multiple)
        if capacity is not None:
            if capacity < need:
                if log is not None:
                    log(f"pad_dataset: requested neighbor capacity {capacity} < {need} pairs in the bucket of "
                        f"≤{bound} atoms; using {cap}")
            else:
                cap = int(capacity)
        reach = np.max([_reach(ds.samples[k].box, r) for k in idx], axis=0)
        m = idx.size
        arr = {
            "positions": np.zeros((m, bound, 3)), "species": np.zeros((m, bound), np.int32),
            "atom_mask": np.zeros((m, bound), bool), "box": np.zeros((m, 3, 3)), "energy": np.zeros(m),
            "forces": np.zeros((m, bound, 3)), "virial": np.zeros((m, 3, 3)), "has_virial": np.zeros(m, bool),
            "weight": np.zeros(m), "senders": np.zeros((m, cap), np.int32), "receivers": np.zeros((m, cap), np.int32),
            "shifts": np.zeros((m, cap, 3)), "pair_mask": np.zeros((m, cap), bool), "count": counts.astype(np.int32),
        }
        for row, (k, (i, j, sh)) in enumerate(zip(idx, pairs)):
            s = ds.samples[k]
            na, c = s.n_atoms, i.size
            arr["positions"][row, :na] = s.positions
            # padded atoms sit at the first real atom (finite, masked out everywhere)
            arr["positions"][row, na:] = s.positions[0]
            arr["species"][row, :na] = s.species
            arr["atom_mask"][row, :na] = True
            arr["box"][row] = s.box
            arr["energy"][row] = s.energy
            arr["forces"][row, :na] = s.forces
            arr["virial"][row] = s.virial
            arr["has_virial"][row] = s.has_virial
            arr["weight"][row] = s.weight
            arr["senders"][row, :c], arr["receivers"][row, :c], arr["shifts"][row, :c] = i, j, sh
            arr["pair_mask"][row, :c] = True
        out.append(_Bucket(bound, cap, _offsets(reach), idx, arr))
    return PaddedDataset(ds, float(cutoff), float(skin), out, dtype)


def collate(samples: Sequence[Sample], cutoff: float, *, skin: float = 0.0, dtype=None) -> Batch:
    """One Batch from a few samples (all padded to the largest), e.g. for tests and inference."""
    ds = Dataset(tuple(samples), ("?",))
    pd = pad_dataset(ds, cutoff, skin=skin, dtype=dtype)
    return next(pd.batches(len(samples)))
