"""Fetch a published DFT dataset, verify it, and convert it into DeePMD npy systems.

A dataset source is described by a YAML file (no element or paper is known to this module):

    name: some-dataset            # short identifier
    url: https://…/archive.zip    # where the archive is downloaded from
    sha256: <64 hex> | null       # null = not known; then --sha256 or --no-verify is required
    size_bytes: <int> | null      # optional, checked when given
    archive: zip                  # the only archive format supported
    citation: "…"                 # who to cite (copied to the output's provenance.json)
    layout: "…"                   # free text: what the archive holds (documentation only)
    convert:
      format: npy_arrays          # a recipe name, see CONVERTERS
      member: [a/b/inner.zip, folder]   # path of the data folder inside the archive; a segment
                                        # followed by another one is a nested zip archive
      type_map: [X]               # chemical symbols of the type indices
      atom_types: null            # file with per-atom type indices (N,); null: one element
      units: {energy: eV, length: A}    # any energy / length unit of fusepot.core.units
      box_vectors: rows           # rows (DeePMD, ASE) or columns (jax-md): how box.npy stores them
      arrays: {box: box.npy, coord: coord.npy, energy: energy.npy, force: force.npy, virial: virial.npy}
      groups:                     # optional: split frames into systems by an integer label file
        file: labels.npy
        systems: {0: {name: a, virial: true}, 1: {name: b, virial: false}}

`fetch(source, out, …)` downloads (or takes a local file), checks the SHA-256, reads the arrays
straight from the archive (nothing outside the data folder is unpacked; pickled .npy files are
refused), converts them to eV and Å, writes one DeePMD system per group into a staging folder next
to `out` (`core.checkpoint.staging_dir`), reads the result back with `read_deepmd` and only then
renames it into place (`commit_dir`).  Any failure removes the staging folder, so `out` is either
complete or absent; a non-empty existing `out` is refused.

Bad input raises `FetchError` (a `DatasetError`, exit code 2 on the command line) naming the
YAML field, or the archive member and the frame; a failed download raises `DownloadError`.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Optional

import numpy as np

from . import units
from .checkpoint import commit_dir, staging_dir
from .datasets import DatasetError, find_deepmd_systems, read_deepmd

#: largest archive member fusepot reads or unpacks (guards against zip bombs)
MAX_MEMBER_BYTES = 8 * 1024**3
_STAGING_MARKER = ".fusepot-fetch-staging"
_CHUNK = 1 << 20


class FetchError(DatasetError):
    """Bad source description, checksum mismatch, corrupt archive or malformed arrays (exit code 2)."""


class DownloadError(RuntimeError):
    """The archive could not be downloaded (network, HTTP status)."""


# --------------------------------------------------------------------------------------------
# the source description
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GroupSpec:
    name: str
    virial: bool = True


@dataclass(frozen=True)
class ConvertSpec:
    format: str
    member: tuple[str, ...]
    type_map: tuple[str, ...]
    arrays: dict
    energy_unit: str = "eV"
    length_unit: str = "A"
    box_vectors: str = "rows"
    atom_types: Optional[str] = None
    group_file: Optional[str] = None
    groups: dict = field(default_factory=dict)  # label (int) -> GroupSpec
    system_name: str = "all"


@dataclass(frozen=True)
class DatasetSource:
    """One published dataset: where it is, how to check it and how to convert it."""

    name: str
    url: str
    sha256: Optional[str]  # None: not known
    size_bytes: Optional[int]
    citation: str
    archive: str
    convert: ConvertSpec
    layout: str = ""
    path: Optional[Path] = None  # the YAML file it came from
    raw: dict = field(default_factory=dict)


_TOP_KEYS = {"name", "url", "sha256", "size_bytes", "archive", "citation", "layout", "convert", "title",
             "license", "notes"}
_CONVERT_KEYS = {"format", "member", "type_map", "atom_types", "units", "box_vectors", "arrays", "groups",
                 "system_name"}
_ARRAYS = ("box", "coord", "energy", "force", "virial")
_REQUIRED_ARRAYS = ("box", "coord", "energy", "force")


def _check_sha(value, where: str) -> str:
    s = str(value).strip().lower()
    if len(s) != 64 or any(c not in "0123456789abcdef" for c in s):
        raise FetchError(f"{where}: a SHA-256 is 64 hexadecimal digits, got {value!r}")
    return s


def load_source(path) -> DatasetSource:
    """Read and validate a dataset source YAML; errors name the file and the field."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise FetchError(f"{p}: no such file")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise FetchError(f"{p}: not valid YAML ({exc})") from None
    return parse_source(data, where=str(p), path=p)


def parse_source(data, where: str = "source", path: Optional[Path] = None) -> DatasetSource:
    if not isinstance(data, dict):
        raise FetchError(f"{where}: expected a mapping of fields (name, url, sha256, convert, …)")

    def need(d, key, ctx, typ=str):
        if key not in d or d[key] is None or d[key] == "":
            raise FetchError(f"{where}: {ctx}{key}: required field is missing")
        if not isinstance(d[key], typ):
            raise FetchError(f"{where}: {ctx}{key}: expected {getattr(typ, '__name__', typ)}, got {d[key]!r}")
        return d[key]

    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise FetchError(f"{where}: {unknown[0]}: unknown field (known: {', '.join(sorted(_TOP_KEYS))})")
    name = need(data, "name", "")
    url = need(data, "url", "")
    scheme = urllib.parse.urlparse(url).scheme
    if scheme not in ("https", "http"):
        raise FetchError(f"{where}: url: only http(s) URLs are fetched, got {url!r}")
    sha = data.get("sha256")
    sha = None if sha is None else _check_sha(sha, f"{where}: sha256")
    size = data.get("size_bytes")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size <= 0):
        raise FetchError(f"{where}: size_bytes: expected a positive integer or null, got {size!r}")
    archive = data.get("archive", "zip")
    if archive != "zip":
        raise FetchError(f"{where}: archive: only 'zip' is supported, got {archive!r}")
    citation = need(data, "citation", "")
    conv = need(data, "convert", "", dict)
    unknown = sorted(set(conv) - _CONVERT_KEYS)
    if unknown:
        raise FetchError(f"{where}: convert.{unknown[0]}: unknown field (known: {', '.join(sorted(_CONVERT_KEYS))})")
    fmt = need(conv, "format", "convert.")
    if fmt not in CONVERTERS:
        raise FetchError(f"{where}: convert.format: unknown recipe {fmt!r} (known: {', '.join(sorted(CONVERTERS))})")
    member = conv.get("member", [])
    if isinstance(member, str):
        member = [member]
    if not isinstance(member, list) or not all(isinstance(m, str) for m in member):
        raise FetchError(f"{where}: convert.member: expected a path or a list of paths, got {member!r}")
    for m in member:
        pp = PurePosixPath(m)
        if pp.is_absolute() or ".." in pp.parts:
            raise FetchError(f"{where}: convert.member: {m!r} must be a relative path inside the archive")
    type_map = need(conv, "type_map", "convert.", list)
    if not type_map or not all(isinstance(t, str) and t for t in type_map):
        raise FetchError(f"{where}: convert.type_map: expected a non-empty list of chemical symbols")
    atom_types = conv.get("atom_types")
    if atom_types is None and len(type_map) > 1:
        raise FetchError(f"{where}: convert.atom_types: required when type_map has more than one element")
    u = conv.get("units", {}) or {}
    if not isinstance(u, dict) or set(u) - {"energy", "length"}:
        raise FetchError(f"{where}: convert.units: expected {{energy: …, length: …}}, got {u!r}")
    eu, lu = str(u.get("energy", "eV")), str(u.get("length", "A"))
    for key, unit, dim in (("energy", eu, "energy"), ("length", lu, "length")):
        try:
            ok = units.dimension(unit) == dim
        except ValueError as exc:
            raise FetchError(f"{where}: convert.units.{key}: {exc}") from None
        if not ok:
            raise FetchError(f"{where}: convert.units.{key}: {unit!r} is not a {dim} unit")
    box_vectors = conv.get("box_vectors", "rows")
    if box_vectors not in ("rows", "columns"):
        raise FetchError(f"{where}: convert.box_vectors: 'rows' or 'columns', got {box_vectors!r}")
    arrays = need(conv, "arrays", "convert.", dict)
    bad = sorted(set(arrays) - set(_ARRAYS))
    if bad:
        raise FetchError(f"{where}: convert.arrays.{bad[0]}: unknown array (known: {', '.join(_ARRAYS)})")
    for key in _REQUIRED_ARRAYS:
        need(arrays, key, "convert.arrays.")
    groups, group_file = {}, None
    g = conv.get("groups")
    if g is not None:
        if not isinstance(g, dict):
            raise FetchError(f"{where}: convert.groups: expected {{file: …, systems: {{label: {{name: …}}}}}}")
        group_file = need(g, "file", "convert.groups.")
        systems = need(g, "systems", "convert.groups.", dict)
        names = set()
        for label, spec in systems.items():
            ctx = f"convert.groups.systems.{label}"
            if not isinstance(label, int) or isinstance(label, bool):
                raise FetchError(f"{where}: {ctx}: group labels are integers, got {label!r}")
            if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"]:
                raise FetchError(f"{where}: {ctx}.name: required field is missing")
            extra = sorted(set(spec) - {"name", "virial"})
            if extra:
                raise FetchError(f"{where}: {ctx}.{extra[0]}: unknown field (known: name, virial)")
            nm = spec["name"]
            if nm in names or "/" in nm or nm.startswith("."):
                raise FetchError(f"{where}: {ctx}.name: {nm!r} is repeated or not a plain folder name")
            names.add(nm)
            virial = spec.get("virial", True)
            if not isinstance(virial, bool):
                raise FetchError(f"{where}: {ctx}.virial: expected true or false, got {virial!r}")
            groups[label] = GroupSpec(nm, virial)
        if not groups:
            raise FetchError(f"{where}: convert.groups.systems: no group given")
    spec = ConvertSpec(format=fmt, member=tuple(member), type_map=tuple(type_map), arrays=dict(arrays),
                       energy_unit=eu, length_unit=lu, box_vectors=box_vectors, atom_types=atom_types,
                       group_file=group_file, groups=groups, system_name=str(conv.get("system_name", "all")))
    return DatasetSource(name=name, url=url, sha256=sha, size_bytes=size, citation=str(citation).strip(),
                         archive=archive, convert=spec, layout=str(data.get("layout", "")).strip(), path=path,
                         raw=data)


# --------------------------------------------------------------------------------------------
# download and checksum
# --------------------------------------------------------------------------------------------
def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(f"[fusepot] {msg}", file=sys.stderr, flush=True)


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, dest: Path, quiet: bool = False, every_s: float = 2.0) -> str:
    """Stream `url` into `dest` with a progress line every `every_s` seconds; return the SHA-256."""
    h = hashlib.sha256()
    req = urllib.request.Request(url, headers={"User-Agent": "fusepot-data-fetch"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp, open(dest, "wb") as fh:
            total = resp.headers.get("Content-Length")
            total = int(total) if total and total.isdigit() else None
            done, last = 0, time.monotonic()
            for chunk in iter(lambda: resp.read(_CHUNK), b""):
                fh.write(chunk)
                h.update(chunk)
                done += len(chunk)
                now = time.monotonic()
                if now - last >= every_s:
                    last = now
                    of = f" of {total / 1e6:.1f}" if total else ""
                    _log(f"downloading: {done / 1e6:.1f}{of} MB", quiet)
            fh.flush()
            os.fsync(fh.fileno())
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"downloading {url} failed: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise DownloadError(f"downloading {url} failed: {exc} (no network? use --from-file with a local "
                            f"copy of the archive)") from exc
    if total is not None and done != total:
        raise DownloadError(f"downloading {url}: got {done} bytes, the server announced {total} (interrupted?)")
    _log(f"downloaded {done / 1e6:.1f} MB", quiet)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# reading from (nested) zip archives without unpacking them
# --------------------------------------------------------------------------------------------
def _is_junk(name: str) -> bool:
    parts = PurePosixPath(name).parts
    return not parts or parts[0] == "__MACOSX" or parts[-1].startswith("._") or parts[-1] == ".DS_Store"


def _open_zip(path: Path, label: str) -> zipfile.ZipFile:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise FetchError(f"{label}: not a readable zip archive ({exc}); corrupt or incomplete download?") from None
    for info in zf.infolist():
        pp = PurePosixPath(info.filename)
        if pp.is_absolute() or ".." in pp.parts:
            raise FetchError(f"{label}: member {info.filename!r} has an unsafe path; refusing the archive")
    return zf


def _find_member(zf: zipfile.ZipFile, rel: str, label: str, want_dir: bool) -> str:
    """Exact path, else the unique member (folder) whose path ends with `rel` (archives are often
    packed with an extra top-level folder)."""
    rel = rel.strip("/")
    names = [n for n in zf.namelist() if not _is_junk(n)]
    if want_dir:
        if rel in ("", "."):
            return ""
        dirs = set()
        for n in names:
            parts = PurePosixPath(n).parts[:-1] if not n.endswith("/") else PurePosixPath(n).parts
            for k in range(1, len(parts) + 1):
                dirs.add("/".join(parts[:k]))
        cands = sorted(d for d in dirs if d == rel or d.endswith("/" + rel))
    else:
        cands = sorted(n for n in names if not n.endswith("/") and (n == rel or n.endswith("/" + rel)))
    if rel in cands:
        return rel
    if len(cands) == 1:
        return cands[0]
    what = "folder" if want_dir else "file"
    if not cands:
        top = sorted({PurePosixPath(n).parts[0] for n in names})[:8]
        raise FetchError(f"{label}: no {what} {rel!r} in the archive (top-level entries: {top})")
    raise FetchError(f"{label}: {what} {rel!r} is ambiguous in the archive: {cands[:5]}")


def _check_size(info: zipfile.ZipInfo, label: str) -> None:
    if info.file_size > MAX_MEMBER_BYTES:
        raise FetchError(f"{label}: member is {info.file_size} bytes unpacked, above the limit of "
                         f"{MAX_MEMBER_BYTES} bytes; refusing it")


def _read_member(zf: zipfile.ZipFile, name: str, label: str) -> bytes:
    info = zf.getinfo(name)
    _check_size(info, label)
    try:
        return zf.read(name)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
        raise FetchError(f"{label}: cannot unpack ({exc}); the archive is corrupt") from None


def _extract_member(zf: zipfile.ZipFile, name: str, dest: Path, label: str) -> None:
    info = zf.getinfo(name)
    _check_size(info, label)
    try:
        with zf.open(name) as src, open(dest, "wb") as dst:
            shutil.copyfileobj(src, dst, _CHUNK)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise FetchError(f"{label}: cannot unpack ({exc}); the archive is corrupt") from None


class _DataFolder:
    """A folder inside a (possibly nested) zip archive, from which named files are read."""

    def __init__(self, archive: Path, label: str, member: tuple[str, ...], workdir: Path):
        self._zips = []
        zf = _open_zip(archive, label)
        self._zips.append(zf)
        for k, seg in enumerate(member[:-1]):
            name = _find_member(zf, seg, label, want_dir=False)
            label = f"{label}!{name}"
            inner = workdir / f"nested{k}.zip"
            _extract_member(zf, name, inner, label)
            zf = _open_zip(inner, label)
            self._zips.append(zf)
        last = member[-1] if member else ""
        self.prefix = _find_member(zf, last, label, want_dir=True)
        self.zf, self.label = zf, label

    def where(self, fname: str) -> str:
        return f"{self.label}!{self.prefix + '/' if self.prefix else ''}{fname}"

    def load_npy(self, fname: str, what: str) -> np.ndarray:
        name = f"{self.prefix}/{fname}" if self.prefix else fname
        where = self.where(fname)
        if name not in self.zf.namelist():
            raise FetchError(f"{where}: missing from the archive (needed for {what})")
        data = _read_member(self.zf, name, where)
        try:
            return np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as exc:
            if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
                raise FetchError(f"{where}: holds pickled Python objects; fusepot does not unpickle downloaded "
                                 f"files (convert it to a numeric array first)") from None
            raise FetchError(f"{where}: not a readable .npy array ({exc})") from None
        except Exception as exc:  # noqa: BLE001 - report which file
            raise FetchError(f"{where}: not a readable .npy array ({type(exc).__name__}: {exc})") from None

    def close(self):
        for z in self._zips:
            z.close()


# --------------------------------------------------------------------------------------------
# the npy_arrays recipe
# --------------------------------------------------------------------------------------------
def _frames(a: np.ndarray, where: str, n: Optional[int], shapes: list[tuple], expect: str) -> np.ndarray:
    """Reshape a per-frame array to (n,) + shapes[0]; accepted layouts are (n,) + s for s in shapes."""
    if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise FetchError(f"{where}: dtype {a.dtype} is not a real number type")
    if a.ndim == 0:
        raise FetchError(f"{where}: a scalar, expected {expect}")
    if n is not None and a.shape[0] != n:
        raise FetchError(f"{where}: {a.shape[0]} frames, but the box array has {n} "
                         f"(no labels from frame {min(a.shape[0], n)} on)")
    for s in shapes:
        if a.shape[1:] == s:
            return a.astype(np.float64).reshape((a.shape[0],) + shapes[0])
    raise FetchError(f"{where}: shape {a.shape}, expected {expect}")


def _first_bad_frame(a: np.ndarray) -> int:
    bad = ~np.isfinite(a.reshape(a.shape[0], -1))
    return int(np.nonzero(bad.any(axis=1))[0][0])


def convert_npy_arrays(folder: _DataFolder, spec: ConvertSpec, out: Path, log: Callable[[str], None]) -> dict:
    """Convert per-frame numpy arrays into DeePMD systems under `out` (eV, Å); return a summary."""
    arrs = spec.arrays
    box = folder.load_npy(arrs["box"], "convert.arrays.box")
    if box.ndim < 1:
        raise FetchError(f"{folder.where(arrs['box'])}: a scalar, expected (n_frames, 9) or (n_frames, 3, 3)")
    n = int(box.shape[0])
    if n == 0:
        raise FetchError(f"{folder.where(arrs['box'])}: no frames")
    box = _frames(box, folder.where(arrs["box"]), n, [(3, 3), (9,)], "(n_frames, 9) or (n_frames, 3, 3)")
    if spec.box_vectors == "columns":
        box = np.swapaxes(box, 1, 2)
    coord_raw = folder.load_npy(arrs["coord"], "convert.arrays.coord")
    w_coord = folder.where(arrs["coord"])
    if coord_raw.ndim == 3 and coord_raw.shape[2] == 3:
        n_atoms = int(coord_raw.shape[1])
    elif coord_raw.ndim == 2 and coord_raw.shape[1] % 3 == 0 and coord_raw.shape[1] > 0:
        n_atoms = int(coord_raw.shape[1] // 3)
    else:
        raise FetchError(f"{w_coord}: shape {coord_raw.shape}, expected (n_frames, 3·n_atoms) or "
                         f"(n_frames, n_atoms, 3)")
    per_atom = f"(n_frames, {3 * n_atoms}) or (n_frames, {n_atoms}, 3)"
    coord = _frames(coord_raw, w_coord, n, [(n_atoms, 3), (3 * n_atoms,)], per_atom)
    force = _frames(folder.load_npy(arrs["force"], "convert.arrays.force"), folder.where(arrs["force"]), n,
                    [(n_atoms, 3), (3 * n_atoms,)], per_atom + f" (coord has {n_atoms} atoms per frame)")
    energy = _frames(folder.load_npy(arrs["energy"], "convert.arrays.energy"), folder.where(arrs["energy"]), n,
                     [(), (1,)], "(n_frames,) or (n_frames, 1)")
    virial = None
    if "virial" in arrs:
        virial = _frames(folder.load_npy(arrs["virial"], "convert.arrays.virial"), folder.where(arrs["virial"]),
                         n, [(3, 3), (9,)], "(n_frames, 9) or (n_frames, 3, 3)")
    checks = [("box", box), ("coord", coord), ("force", force), ("energy", energy)]
    if virial is not None:
        checks.append(("virial", virial))
    for key, a in checks:
        if not np.all(np.isfinite(a)):
            raise FetchError(f"{folder.where(arrs[key])}, frame {_first_bad_frame(a)}: contains NaN or inf")
    # unit conversion to eV and Å (core.units is the one place that knows the factors)
    e_fac = float(units.to_internal(1.0, spec.energy_unit))
    l_fac = float(units.to_internal(1.0, spec.length_unit))
    box, coord = box * l_fac, coord * l_fac
    energy, force = energy * e_fac, force * (e_fac / l_fac)
    virial = virial * e_fac if virial is not None else None
    vol = np.abs(np.linalg.det(box))
    if np.any(~(vol > 1e-6)):
        k = int(np.nonzero(~(vol > 1e-6))[0][0])
        raise FetchError(f"{folder.where(arrs['box'])}, frame {k}: cell volume is not positive "
                         f"(|det box| = {vol[k]:.3g} Å³)")
    # atom types
    if spec.atom_types:
        t = folder.load_npy(spec.atom_types, "convert.atom_types")
        w_t = folder.where(spec.atom_types)
        if t.shape != (n_atoms,) or not np.issubdtype(t.dtype, np.integer):
            raise FetchError(f"{w_t}: expected ({n_atoms},) integer type indices, got {t.dtype} {t.shape}")
        if t.min() < 0 or t.max() >= len(spec.type_map):
            raise FetchError(f"{w_t}: type index {int(t.max())} has no symbol in convert.type_map "
                             f"{list(spec.type_map)}")
        types = t.astype(np.int64)
    else:
        types = np.zeros(n_atoms, dtype=np.int64)
    # groups
    if spec.group_file:
        lab = folder.load_npy(spec.group_file, "convert.groups.file")
        w_g = folder.where(spec.group_file)
        if lab.ndim == 2 and lab.shape[1] == 1:
            lab = lab[:, 0]
        if lab.shape != (n,):
            raise FetchError(f"{w_g}: shape {lab.shape}, expected ({n},) — one label per frame")
        if not (np.issubdtype(lab.dtype, np.integer) or np.all(np.mod(lab, 1) == 0)):
            raise FetchError(f"{w_g}: group labels must be integers")
        lab = lab.astype(np.int64)
        for k, v in enumerate(lab):
            if int(v) not in spec.groups:
                raise FetchError(f"{w_g}, frame {k}: label {int(v)} is not one of convert.groups.systems "
                                 f"{sorted(spec.groups)}")
        plan = [(spec.groups[g], np.nonzero(lab == g)[0]) for g in sorted(spec.groups)]
    else:
        plan = [(GroupSpec(spec.system_name, True), np.arange(n))]
    summary = {}
    for g, idx in plan:
        if idx.size == 0:
            log(f"group {g.name!r}: no frames; nothing written")
            continue
        with_virial = g.virial and virial is not None
        sysdir = out / g.name
        sd = sysdir / "set.000"
        sd.mkdir(parents=True)
        (sysdir / "type.raw").write_text("\n".join(str(int(x)) for x in types) + "\n")
        (sysdir / "type_map.raw").write_text("\n".join(spec.type_map) + "\n")
        np.save(sd / "box.npy", box[idx].reshape(idx.size, 9))
        np.save(sd / "coord.npy", coord[idx].reshape(idx.size, 3 * n_atoms))
        np.save(sd / "energy.npy", energy[idx])
        np.save(sd / "force.npy", force[idx].reshape(idx.size, 3 * n_atoms))
        if with_virial:
            np.save(sd / "virial.npy", virial[idx].reshape(idx.size, 9))
        summary[g.name] = {"frames": int(idx.size), "atoms": n_atoms, "virial": bool(with_virial),
                           "source_frames": [int(i) for i in idx]}
        log(f"wrote {g.name}: {idx.size} frames of {n_atoms} atoms{' with virials' if with_virial else ''}")
    if not summary:
        raise FetchError(f"{folder.label}: no frames were converted")
    return summary


#: conversion recipes by the name used in `convert.format`
CONVERTERS: dict[str, Callable] = {"npy_arrays": convert_npy_arrays}


# --------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------
def fetch(source: DatasetSource, out, *, from_file=None, sha256: Optional[str] = None, no_verify: bool = False,
          keep_archive: bool = False, quiet: bool = False) -> dict:
    """Download (or take `from_file`), verify, convert into `out`; return the provenance record.

    Checksum: `sha256` (explicit) wins over `source.sha256`; with neither, the call is refused
    unless `no_verify`, which only warns (the archive's actual SHA-256 is printed and recorded).
    """
    out = Path(out)
    if sha256 is not None and no_verify:
        raise FetchError("--sha256 and --no-verify contradict each other; give one")
    if sha256 is not None:
        sha256 = _check_sha(sha256, "--sha256")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FetchError(f"output folder {out} exists and is not empty; choose another --out "
                         f"(nothing was overwritten)")
    expected, basis = (sha256, "--sha256") if sha256 else (source.sha256, "the source's sha256")
    if expected is None and not no_verify:
        raise FetchError(f"{source.path or source.name}: sha256 is not known for this dataset, so the archive "
                         f"cannot be verified. Pass --sha256 HEX if you have the checksum from a trusted "
                         f"source, or --no-verify to accept the archive unverified (its SHA-256 is then "
                         f"printed and recorded so you can pin it). Nothing was downloaded.")
    if sha256 and source.sha256 and sha256 != source.sha256:
        print(f"[fusepot] warning: --sha256 differs from the sha256 recorded in {source.path or source.name} "
              f"({source.sha256}); checking against --sha256", file=sys.stderr)
    if from_file is not None:
        from_file = Path(from_file)
        if not from_file.is_file():
            raise FetchError(f"--from-file {from_file}: no such file")

    tmp = out.with_name(out.name + ".new")
    if tmp.exists() and not (tmp / _STAGING_MARKER).exists():
        raise FetchError(f"{tmp} exists and was not made by `fusepot data fetch`; move it away first")
    staging = staging_dir(out)
    try:
        (staging / _STAGING_MARKER).write_text("staging folder of fusepot data fetch; safe to delete\n")
        work = staging / "_work"
        work.mkdir()
        archive_name = PurePosixPath(urllib.parse.urlparse(source.url).path).name or f"{source.name}.zip"
        if from_file is not None:
            archive, origin = from_file, str(from_file)
            _log(f"using local archive {from_file}", quiet)
            actual = sha256_file(from_file)
        else:
            archive, origin = work / archive_name, source.url
            _log(f"downloading {source.url}", quiet)
            actual = download(source.url, archive, quiet=quiet)
        size = archive.stat().st_size
        if expected is not None:
            if actual != expected:
                raise FetchError(f"{origin}: SHA-256 mismatch: expected {expected} ({basis}), got {actual}; "
                                 f"the archive is not the one described (nothing was written)")
            verified = basis
            _log(f"sha256 verified ({basis}): {actual}", quiet)
        else:
            verified = "NOT VERIFIED (--no-verify)"
            print("[fusepot] " + "!" * 72 + "\n"
                  f"[fusepot] WARNING: --no-verify: the archive's integrity and identity are NOT checked.\n"
                  f"[fusepot] its SHA-256 is {actual}\n"
                  f"[fusepot] compare it with a trusted value before using the data, then pin it as "
                  f"`sha256:` in {source.path or 'the source YAML'}.\n"
                  "[fusepot] " + "!" * 72, file=sys.stderr, flush=True)
        if source.size_bytes is not None and size != source.size_bytes:
            raise FetchError(f"{origin}: {size} bytes, but the source says size_bytes: {source.size_bytes}")
        folder = _DataFolder(archive, archive.name if from_file is None else str(from_file),
                             source.convert.member, work)
        try:
            summary = CONVERTERS[source.convert.format](folder, source.convert, staging,
                                                        lambda m: _log(m, quiet))
        finally:
            folder.close()
        # read the result back exactly as training will
        for sysdir in find_deepmd_systems(staging):
            try:
                read_deepmd(sysdir, list(source.convert.type_map))
            except DatasetError as exc:
                raise FetchError(f"the converted data failed validation: {exc}") from None
        if keep_archive:
            (staging / "archive").mkdir()
            dest = staging / "archive" / (from_file.name if from_file is not None else archive_name)
            if from_file is not None:
                shutil.copyfile(from_file, dest)
            else:
                os.replace(archive, dest)
        shutil.rmtree(work)
        record = {
            "source": source.name, "url": source.url, "origin": origin, "citation": source.citation,
            "sha256": actual, "verified": verified, "size_bytes": size,
            "fetched_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "units": {"energy": "eV", "length": "A", "force": "eV/A", "virial": "eV"},
            "converted_from_units": {"energy": source.convert.energy_unit, "length": source.convert.length_unit},
            "convert": source.raw.get("convert"), "systems": summary,
        }
        (staging / "provenance.json").write_text(json.dumps(record, indent=1))
        (staging / _STAGING_MARKER).unlink()
        commit_dir(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    _log(f"done: {sum(s['frames'] for s in summary.values())} frames in {len(summary)} system(s) under {out}",
         quiet)
    return record
