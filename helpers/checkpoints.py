"""Which checkpoints of a stage are complete, and never loading a torn one.

A TensorFlow checkpoint ``ckpt-N`` is an index file (``ckpt-N.index``) plus
data shards (``ckpt-N.data-0000k-of-0000n``). A Colab disconnect during a
write to Drive can leave either of them truncated. A checkpoint counts only
when its index parses, every data shard is there, the data is at least as
long as the tensors the index lists, and (for the one we are about to load)
every tensor reads back with a valid checksum.

A torn checkpoint is reported with a :class:`TornCheckpointWarning`, moved
into ``<stage dir>/torn/`` (never deleted) and TensorFlow's ``checkpoint``
state file is rewritten to list only complete checkpoints, so Model Garden's
CheckpointManager resumes from the newest complete one.
"""
from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path

CKPT_RE = re.compile(r"^ckpt-(\d+)\.index$")
TORN_DIR = "torn"


class TornCheckpointWarning(UserWarning):
    """A checkpoint was incomplete or unreadable and is skipped."""


def list_checkpoints(ckpt_dir) -> list[tuple[int, Path]]:
    """``(step, prefix)`` of every ``ckpt-N`` with an index file, oldest first."""
    ckpt_dir = Path(ckpt_dir)
    found = []
    if ckpt_dir.is_dir():
        for p in ckpt_dir.iterdir():
            m = CKPT_RE.match(p.name)
            if m:
                found.append((int(m.group(1)), ckpt_dir / f"ckpt-{m.group(1)}"))
    return sorted(found)


def _data_files(prefix: Path) -> list[Path]:
    return sorted(prefix.parent.glob(prefix.name + ".data-*-of-*"))


def check_checkpoint(prefix, deep: bool = True) -> str | None:
    """None when ``prefix`` is a complete, readable checkpoint, else the reason it is not.

    ``deep`` reads every tensor back (TensorFlow verifies each tensor's CRC32C),
    which costs one read of the checkpoint.
    """
    import numpy as np
    import tensorflow as tf

    prefix = Path(prefix)
    index = prefix.with_name(prefix.name + ".index")
    if not index.is_file() or index.stat().st_size == 0:
        return f"{index.name} is missing or empty"
    data = _data_files(prefix)
    if not data:
        return f"no data file next to {index.name}"
    m = re.search(r"of-(\d+)$", data[0].name)
    if m and len(data) != int(m.group(1)):
        return f"{len(data)} of {int(m.group(1))} data shards present"
    try:
        reader = tf.train.load_checkpoint(str(prefix))
        shapes = reader.get_variable_to_shape_map()
        dtypes = reader.get_variable_to_dtype_map()
    except Exception as e:  # noqa: BLE001 - any failure means unreadable
        return f"index unreadable: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    need = sum(int(np.prod(shapes[k], dtype=np.int64)) * dtypes[k].size
               for k in shapes if dtypes[k] != tf.string)
    for k in shapes:  # string tensors (the object graph) are small: read them, count their bytes
        if dtypes[k] == tf.string:
            try:
                val = np.asarray(reader.get_tensor(k), dtype=object).ravel()
            except Exception as e:  # noqa: BLE001
                return f"tensor {k!r} unreadable: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
            need += sum(len(v) for v in val)
    have = sum(f.stat().st_size for f in data)
    if have < need:
        return f"data truncated: {have} bytes on disk, tensors need at least {need}"
    if deep:
        for name in shapes:
            if dtypes[name] == tf.string:
                continue  # already read above
            try:
                reader.get_tensor(name)
            except Exception as e:  # noqa: BLE001
                return f"tensor {name!r} unreadable: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return None


def _quarantine(prefix: Path, reason: str) -> Path:
    """Move a torn checkpoint's files into ``torn/`` (kept for inspection, never loaded)."""
    dest = prefix.parent / TORN_DIR
    dest.mkdir(exist_ok=True)
    for f in [prefix.with_name(prefix.name + ".index"), *_data_files(prefix)]:
        if f.exists():
            target = dest / f.name
            k = 1
            while target.exists():
                target = dest / f"{f.name}.{k}"
                k += 1
            shutil.move(str(f), str(target))
    (dest / f"{prefix.name}.reason.txt").write_text(reason + "\n")
    return dest


def latest_complete(ckpt_dir, repair: bool = True, deep: bool = True) -> tuple[int, Path] | None:
    """The newest complete checkpoint ``(step, prefix)`` in ``ckpt_dir``, or None.

    Newer torn checkpoints are reported with a :class:`TornCheckpointWarning`;
    with ``repair`` they are moved to ``torn/`` and TensorFlow's ``checkpoint``
    state file is rewritten to list only complete checkpoints.
    """
    ckpts = list_checkpoints(ckpt_dir)
    chosen = None
    torn = []
    for step, prefix in reversed(ckpts):
        reason = check_checkpoint(prefix, deep=deep)
        if reason is None:
            chosen = (step, prefix)
            break
        torn.append((step, prefix, reason))
    for step, prefix, reason in torn:
        fallback = f"using {chosen[1].name} instead" if chosen else "no complete checkpoint left"
        warnings.warn(f"torn checkpoint {prefix} ({reason}); {fallback}",
                      TornCheckpointWarning, stacklevel=2)
        if repair:
            _quarantine(prefix, reason)
    if repair and (torn or (chosen and not _state_points_to(ckpt_dir, chosen[1]))):
        write_state(ckpt_dir)
    return chosen


def _state_points_to(ckpt_dir, prefix: Path) -> bool:
    import tensorflow as tf

    state = tf.train.get_checkpoint_state(str(ckpt_dir))
    return bool(state) and Path(state.model_checkpoint_path).name == prefix.name


def write_state(ckpt_dir) -> None:
    """Rewrite TF's ``checkpoint`` state file from the checkpoints that have files.

    Called after torn ones were moved away, so it lists complete ones only.
    TensorFlow writes it atomically (temp file + rename).
    """
    import tensorflow as tf

    ckpts = list_checkpoints(ckpt_dir)
    if not ckpts:
        state = Path(ckpt_dir) / "checkpoint"
        if state.exists():
            shutil.move(str(state), str(Path(ckpt_dir) / TORN_DIR / "checkpoint.stale"))
        return
    tf.compat.v1.train.update_checkpoint_state(
        str(ckpt_dir), ckpts[-1][1].name, all_model_checkpoint_paths=[p.name for _, p in ckpts])


def checkpoint_step(prefix) -> int:
    """The global step a ``ckpt-N`` prefix was saved at."""
    m = re.search(r"ckpt-(\d+)$", str(prefix))
    if not m:
        raise ValueError(f"{prefix}: not a ckpt-<step> checkpoint prefix")
    return int(m.group(1))
