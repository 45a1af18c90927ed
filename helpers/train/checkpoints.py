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
CheckpointManager resumes from the newest complete one. So are data files whose
index is gone (a deleted or never-written ``.index``), and a state file that does
not parse (a 0-byte file is Drive's typical failure) is rebuilt from the complete
checkpoints present. ``ckpt-N_temp/`` folders, TensorFlow's own scratch space for a
save that never finished (disk full, a kill), are removed.
"""
from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path

from helpers.workspace import check_folder_path

CKPT_RE = re.compile(r"^ckpt-(\d+)\.index$")
DATA_RE = re.compile(r"^ckpt-(\d+)\.data-\d+-of-\d+$")
TEMP_RE = re.compile(r"^ckpt-\d+_temp")  # TensorFlow's sharded-save scratch folder
TORN_DIR = "torn"
STATE_FILE = "checkpoint"


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


def data_files(prefix) -> list[Path]:
    """The data shards ``ckpt-N.data-0000k-of-0000n`` of checkpoint ``prefix`` present, in order."""
    prefix = Path(prefix)
    return sorted(prefix.parent.glob(prefix.name + ".data-*-of-*"))


def check_checkpoint(prefix, deep: bool = True) -> str | None:
    """None when ``prefix`` is a complete, readable checkpoint, else the reason it is not.

    ``deep`` reads every tensor back (TensorFlow verifies each tensor's CRC32C),
    which costs one read of the checkpoint.
    """
    import numpy as np
    import tensorflow as tf

    prefix = Path(prefix)
    check_folder_path(prefix.parent, "this stage")  # TF would not find a whole checkpoint: never "torn"
    index = prefix.with_name(prefix.name + ".index")
    if not index.is_file() or index.stat().st_size == 0:
        return f"{index.name} is missing or empty"
    data = data_files(prefix)
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
    for f in [prefix.with_name(prefix.name + ".index"), *data_files(prefix)]:
        if f.exists():
            target = dest / f.name
            k = 1
            while target.exists():
                target = dest / f"{f.name}.{k}"
                k += 1
            shutil.move(str(f), str(target))
    (dest / f"{prefix.name}.reason.txt").write_text(reason + "\n")
    return dest


def orphan_data(ckpt_dir) -> list[tuple[int, Path]]:
    """``(step, prefix)`` of data files whose ``.index`` is missing (never loadable)."""
    ckpt_dir = Path(ckpt_dir)
    steps = {int(m.group(1)) for p in ckpt_dir.iterdir() if (m := DATA_RE.match(p.name))} \
        if ckpt_dir.is_dir() else set()
    indexed = {s for s, _ in list_checkpoints(ckpt_dir)}
    return [(s, ckpt_dir / f"ckpt-{s}") for s in sorted(steps - indexed)]


def remove_save_leftovers(ckpt_dir) -> list[Path]:
    """Delete ``ckpt-N_temp*`` folders: TensorFlow's scratch space of a save that never
    finished. They hold nothing loadable (a finished save renames its files out)."""
    ckpt_dir = Path(ckpt_dir)
    gone = [p for p in ckpt_dir.iterdir() if TEMP_RE.match(p.name)] if ckpt_dir.is_dir() else []
    for p in gone:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return gone


def state_problem(ckpt_dir) -> str | None:
    """Why TensorFlow's ``checkpoint`` state file in ``ckpt_dir`` cannot be used, or None."""
    import tensorflow as tf

    path = Path(ckpt_dir) / STATE_FILE
    if not path.exists():
        return None
    if path.stat().st_size == 0:
        return "it is empty (0 bytes)"
    try:
        state = tf.train.get_checkpoint_state(str(ckpt_dir))  # None (and a log line) on a parse error
    except Exception as e:  # noqa: BLE001 - TF raises ValueError for a state naming no checkpoint
        return f"it does not parse ({type(e).__name__})"
    if state is None or not state.model_checkpoint_path:
        return "it does not parse"
    return None


def latest_complete(ckpt_dir, repair: bool = True, deep: bool = True) -> tuple[int, Path] | None:
    """The newest complete checkpoint ``(step, prefix)`` in ``ckpt_dir``, or None.

    Newer torn checkpoints (and data files without an index) are reported with a
    :class:`TornCheckpointWarning`; with ``repair`` they are moved to ``torn/``,
    ``ckpt-N_temp`` leftovers are removed, and TensorFlow's ``checkpoint`` state file is
    rewritten (with timestamps, so pruning keeps working) to list only complete ones;
    a state file that does not parse is rebuilt the same way.
    """
    ckpts = list_checkpoints(ckpt_dir)
    chosen = None
    torn = []
    newest = ckpts[-1][0] if ckpts else -1
    for step, prefix in orphan_data(ckpt_dir):
        if step > newest:  # newer than anything loadable: say so, and set it aside
            torn.append((step, prefix, f"{prefix.name}.index is missing"))
    torn.sort(key=lambda t: -t[0])
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
    if not repair:
        return chosen
    bad_state = state_problem(ckpt_dir)
    if bad_state:
        warnings.warn(f"{Path(ckpt_dir) / STATE_FILE}: {bad_state}; rebuilt from the complete "
                      f"checkpoints present", TornCheckpointWarning, stacklevel=2)
    remove_save_leftovers(ckpt_dir)
    if torn or bad_state or (chosen and not _state_points_to(ckpt_dir, chosen[1])):
        write_state(ckpt_dir)
    return chosen


def _state_points_to(ckpt_dir, prefix: Path) -> bool:
    import tensorflow as tf

    state = tf.train.get_checkpoint_state(str(ckpt_dir))
    return bool(state) and Path(state.model_checkpoint_path).name == prefix.name


def write_state(ckpt_dir) -> None:
    """Rewrite TF's ``checkpoint`` state file from the checkpoints that have files.

    Called after torn ones were moved away, so it lists complete ones only. Each gets
    its index file's time as its timestamp, as CheckpointManager records them: without
    timestamps CheckpointManager never prunes the checkpoints it finds at start-up.
    TensorFlow writes it atomically (temp file + rename).
    """
    import tensorflow as tf

    ckpts = list_checkpoints(ckpt_dir)
    if not ckpts:
        state = Path(ckpt_dir) / STATE_FILE
        if state.exists():
            (Path(ckpt_dir) / TORN_DIR).mkdir(exist_ok=True)
            shutil.move(str(state), str(Path(ckpt_dir) / TORN_DIR / "checkpoint.stale"))
        return
    times = [p.with_name(p.name + ".index").stat().st_mtime for _, p in ckpts]
    tf.compat.v1.train.update_checkpoint_state(
        str(ckpt_dir), ckpts[-1][1].name, all_model_checkpoint_paths=[p.name for _, p in ckpts],
        all_model_checkpoint_timestamps=times, last_preserved_timestamp=min(times) - 1)


def checkpoint_step(prefix) -> int:
    """The global step a ``ckpt-N`` prefix was saved at."""
    m = re.search(r"ckpt-(\d+)$", str(prefix))
    if not m:
        raise ValueError(f"{prefix}: not a ckpt-<step> checkpoint prefix")
    return int(m.group(1))
