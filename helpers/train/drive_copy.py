"""What goes to Drive: only what a resume needs, in about a quarter of a checkpoint's bytes.

A local checkpoint (Model Garden's trainer: ``global_step``, the model, the optimizer) holds the
weights and SGD's momentum, all float32. A copy on Drive is only for a new runtime's resume, so
:func:`compact` keeps:

* the optimizer's own state exactly (its iteration count, which places the learning-rate
  schedule, and a mixed-precision loss scale), ``global_step`` and the object graph;
* the model's float32 weights as float16: half the bytes, a relative rounding error of at most
  2^-11 (a weight beyond float16's range stays float32);
* nothing of a weight that still equals the stage's **base** (the heads stage's frozen backbone):
  the base, a float32 copy of the weights written once per stage into ``<stage>/base/``, holds it.

It leaves out SGD's momentum ("slot") variables: a resume from a Drive copy starts them at zero,
as at a stage's first step. Which keys were cast, left to the base or left out is recorded in the
copy itself (key :data:`MANIFEST_KEY`), so a copy is whole or absent with its manifest.

A compact copy is never restored as it is: :func:`expand` writes the full checkpoint again
(weights back to float32, momentum zeros, the base's weights), with the same keys and object
graph TensorFlow wrote, so Model Garden restores it as its own. :func:`full_checkpoint` is the
one door every reader of a stage's checkpoint in the workspace goes through (a resume, the next
stage's start, prediction); an ordinary checkpoint passes through unchanged.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from helpers.errors import UserError

MANIFEST_KEY = "_NUCLEI_DRIVE_COPY"
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
SLOT_MARK = "/.OPTIMIZER_SLOT/"   # legacy Keras optimizers (Model Garden's): a slot under its variable
NEW_SLOT_RE = re.compile(r"^optimizer/_variables/\d+/")  # Keras' newer optimizers keep them in a list
EXACT_ITEMS = ("optimizer", "global_step", "save_counter")  # Model Garden's trainer's non-model items
BASE_DIR = "base"
FLOAT16_MAX = 65504.0


class DriveCopyError(UserError, RuntimeError):
    """A compact copy cannot be expanded (its base is gone or was replaced)."""


@dataclass
class Base:
    """The stage's base on Drive: its prefix, a token that names this base, and a digest of each
    weight it holds (so a new runtime needs only its manifest, not its data)."""
    prefix: Path
    token: str
    digests: dict


def is_slot(key: str) -> bool:
    """An optimizer's slot variable (SGD's momentum): zero at a stage's start, left off Drive."""
    return SLOT_MARK in key or bool(NEW_SLOT_RE.match(key))


def _is_weight(key: str, dtype) -> bool:
    return dtype.name == "float32" and key.split("/", 1)[0] not in EXACT_ITEMS and not is_slot(key)


def _digest(value: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(value).tobytes(), digest_size=16).hexdigest()


def _reader(prefix):
    import tensorflow as tf

    return tf.train.load_checkpoint(str(prefix))


def read_manifest(prefix) -> dict | None:
    """The manifest a compact copy (or a base) holds; None for an ordinary checkpoint."""
    reader = _reader(prefix)
    if not reader.has_tensor(MANIFEST_KEY):
        return None
    return json.loads(reader.get_tensor(MANIFEST_KEY))


def is_compact(prefix) -> bool:
    manifest = read_manifest(prefix)
    return manifest is not None and manifest.get("kind") == "compact"


def _write(prefix: Path, values: dict, manifest: dict) -> Path:
    from helpers.train.background_save import write_checkpoint

    values[MANIFEST_KEY] = np.array(json.dumps(manifest, sort_keys=True).encode())
    write_checkpoint(prefix, values)
    return prefix


def compact(prefix, out_prefix, base: Base | None = None) -> Path:
    """Write the Drive copy of checkpoint ``prefix`` to ``out_prefix`` (see the module doc);
    weights equal to ``base``'s are left to it."""
    reader = _reader(prefix)
    dtypes, shapes = reader.get_variable_to_dtype_map(), reader.get_variable_to_shape_map()
    values, keys = {}, {}
    for key in sorted(shapes):
        spec = {"dtype": dtypes[key].name, "shape": list(shapes[key])}
        if is_slot(key):
            keys[key] = dict(spec, stored="zeros")
            continue
        value = reader.get_tensor(key)
        if _is_weight(key, dtypes[key]):
            if base is not None and base.digests.get(key) == _digest(value):
                keys[key] = dict(spec, stored="base")
                continue
            if np.all(np.abs(value) < FLOAT16_MAX):
                value = np.asarray(value, dtype=np.float32).astype(np.float16)
                keys[key] = dict(spec, stored="float16")
        values[key] = value
    manifest = {"kind": "compact", "version": 1, "source": Path(prefix).name, "keys": keys,
                "base": {"name": f"{BASE_DIR}/{base.prefix.name}", "token": base.token} if base else None}
    return _write(Path(out_prefix), values, manifest)


def make_base(prefix, out_prefix) -> Base:
    """Write the float32 weights of ``prefix`` (no optimizer state) as a stage's base."""
    reader = _reader(prefix)
    dtypes = reader.get_variable_to_dtype_map()
    values = {k: reader.get_tensor(k) for k in dtypes if _is_weight(k, dtypes[k])}
    digests = {k: _digest(v) for k, v in values.items()}
    token = uuid.uuid4().hex
    _write(Path(out_prefix), values, {"kind": "base", "version": 1, "token": token, "digests": digests,
                                      "source": Path(prefix).name})
    return Base(Path(out_prefix), token, digests)


def read_base(stage_dir) -> Base | None:
    """The stage's base in ``<stage_dir>/base/``, if a whole one is there."""
    from helpers.train import checkpoints as ckpts

    found = ckpts.list_checkpoints(Path(stage_dir) / BASE_DIR)
    for _, prefix in reversed(found):
        if ckpts.check_checkpoint(prefix, deep=False) is None:
            manifest = read_manifest(prefix) or {}
            if manifest.get("kind") == "base":
                return Base(prefix, manifest["token"], manifest["digests"])
    return None


def expand(prefix, out_prefix) -> Path:
    """Write the full checkpoint a compact copy ``prefix`` stands for to ``out_prefix``."""
    import tensorflow as tf

    prefix = Path(prefix)
    reader = _reader(prefix)
    manifest = json.loads(reader.get_tensor(MANIFEST_KEY))
    base_reader = None
    if any(spec["stored"] == "base" for spec in manifest["keys"].values()):
        base_prefix = prefix.parent / manifest["base"]["name"]
        got = read_manifest(base_prefix) if base_prefix.with_name(base_prefix.name + ".index").is_file() else None
        if not got or got.get("token") != manifest["base"]["token"]:
            raise DriveCopyError(
                f"{prefix} leaves its unchanged weights to {base_prefix}, which is missing or was replaced; "
                f"resume from another checkpoint, or move {prefix.parent} away to train the stage again")
        base_reader = _reader(base_prefix)
    values = {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map() if k != MANIFEST_KEY}
    for key, spec in manifest["keys"].items():
        dtype = tf.as_dtype(spec["dtype"]).as_numpy_dtype
        if spec["stored"] == "float16":
            values[key] = values[key].astype(dtype)
        elif spec["stored"] == "zeros":
            values[key] = np.zeros(spec["shape"], dtype=dtype)
        elif spec["stored"] == "base":
            values[key] = base_reader.get_tensor(key)
    from helpers.train.background_save import write_checkpoint

    write_checkpoint(out_prefix, values)
    return Path(out_prefix)


def full_checkpoint(prefix, cache_root=None) -> Path:
    """``prefix`` itself for an ordinary checkpoint; for a compact Drive copy, its expansion in
    a local cache (``cache_root``, default the system's temp folder), made once per copy."""
    from helpers.train import checkpoints as ckpts

    prefix = Path(prefix)
    if not is_compact(prefix):
        return prefix
    index = prefix.with_name(prefix.name + ".index")
    tag = hashlib.blake2b(index.read_bytes(), digest_size=8).hexdigest()
    folder = Path(cache_root or Path(tempfile.gettempdir()) / "nuclei-expanded") / tag
    out = folder / prefix.name
    if ckpts.check_checkpoint(out, deep=False) is not None:
        shutil.rmtree(folder, ignore_errors=True)
        _forget_old(folder.parent, keep=CACHE_KEEP - 1)
        expand(prefix, out)
    return out


CACHE_KEEP = 4  # expansions kept in the cache (a stage's final weights are read again and again)


def _forget_old(cache: Path, keep: int) -> None:
    """Remove all but the ``keep`` most recently made expansions in ``cache``."""
    found = sorted((p for p in cache.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime) \
        if cache.is_dir() else []
    for old in found[:max(0, len(found) - keep)]:
        shutil.rmtree(old, ignore_errors=True)
