"""Checkpoints without pickle: pytrees are stored as named arrays in an .npz (allow_pickle=False)
plus JSON metadata; loading fills the leaves of a template pytree built from the spec.

Leaves are keyed by their path in the pytree, so a template whose array *shapes* differ (e.g. a
neighbor list that was reallocated larger) still loads: shapes come from the file.
Writes are atomic (temporary file + rename), so a kill -9 never leaves a half-written checkpoint.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np


class CheckpointError(ValueError):
    pass


def _flatten(tree) -> dict[str, np.ndarray]:
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if isinstance(leaf, (jax.Array, np.ndarray, np.generic)) or isinstance(leaf, (int, float, bool)):
            key = jax.tree_util.keystr(path)
            arr = np.asarray(leaf)
            if arr.dtype == object:
                raise CheckpointError(f"checkpoint: leaf {key} is not numeric")
            if jnp.issubdtype(arr.dtype, jax.dtypes.prng_key):
                arr = np.asarray(jax.random.key_data(leaf))
            out[key] = arr
    return out


def atomic_write(path: Path, write) -> None:
    """Write through `write(fh)` to a temporary file, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save_tree(path, tree) -> None:
    arrays = _flatten(tree)
    atomic_write(Path(path), lambda fh: np.savez(fh, **arrays))


def load_tree(path, like):
    path = Path(path)
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
    new = []
    for p, leaf in leaves:
        key = jax.tree_util.keystr(p)
        if isinstance(leaf, (jax.Array, np.ndarray, np.generic, int, float, bool)):
            if key not in data:
                raise CheckpointError(f"checkpoint {path} has no entry {key}; it was written by a different spec/model")
            arr = data[key]
            ref = np.asarray(leaf)
            if ref.shape != arr.shape and arr.ndim != ref.ndim:
                raise CheckpointError(f"checkpoint {path}: {key} has shape {arr.shape}, expected {ref.shape}")
            new.append(jnp.asarray(arr, dtype=ref.dtype) if isinstance(leaf, jax.Array) else arr.astype(ref.dtype))
        else:
            new.append(leaf)
    return jax.tree_util.tree_unflatten(treedef, [x for x in new])


def save_json(path, obj) -> None:
    text = json.dumps(obj, indent=2, default=_json_default)
    atomic_write(Path(path), lambda fh: fh.write(text.encode()))


def _json_default(o):
    if isinstance(o, (np.ndarray, jax.Array)):
        return np.asarray(o).tolist()
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def load_json(path):
    try:
        return json.loads(Path(path).read_text())
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"cannot read {path}: {exc}") from exc


def staging_dir(final: Path) -> Path:
    """A fresh folder to write the next checkpoint into, committed by `commit_dir`."""
    final = Path(final)
    tmp = final.with_name(final.name + ".new")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def commit_dir(tmp: Path, final: Path) -> None:
    """Replace checkpoint folder `final` by `tmp` so that a kill at any moment leaves one complete
    checkpoint: `final`, or (between the two renames) `final.old`, which `resolve_dir` finds."""
    final = Path(final)
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.rename(final, old)
    os.rename(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def resolve_dir(final: Path) -> Path:
    """The complete checkpoint folder to resume from (see `commit_dir`)."""
    final = Path(final)
    old = final.with_name(final.name + ".old")
    return final if final.exists() or not old.exists() else old
