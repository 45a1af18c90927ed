"""Checkpoints go to the runtime's own disk first; a background thread mirrors them to Drive.

A checkpoint of the ``cpu`` profile's ``all`` stage is 363 MB and a stage saves one every 5
steps. Written through Drive's FUSE mount, a save can take longer than the 5 steps themselves,
and then Drive, not the GPU, sets the speed. So Model Garden's CheckpointManager saves into a
local scratch folder (fast), and a :class:`CheckpointMirror` copies the newest complete
checkpoint to the stage folder in the workspace (Drive) while training goes on.

The whole policy, in one place:

* **Drive gets only what a resume needs**: the copy of ``ckpt-N`` is its compact form
  (:mod:`helpers.train.drive_copy`: float16 weights, no momentum, a frozen backbone once in the
  stage's ``base/``), expanded again by whatever reads it.
* **Drive's Trash never fills**: whatever this module deletes there is emptied first
  (:func:`helpers.atomic.discard`; Drive keeps a deleted file's bytes in its Trash, counted against
  the quota), and event files grow by appending. Drive holds at most ``keep`` + 1 copies' bytes.

* **A mirrored checkpoint is complete or absent.** Every file is written under a temp name
  (``.<name>.*.partial``, :mod:`helpers.atomic`), fsynced, then renamed: the data files first,
  the index last, so a ``ckpt-N.index`` on Drive means its data went before it. Then TensorFlow's ``checkpoint``
  state file is rewritten, and only then are older mirrored checkpoints removed (the newest
  ``keep`` stay). Temp files of a copy that a dead runtime left behind are removed by the next
  mirror.
* **Drive may still lose what the runtime wrote**: its FUSE mount uploads in the background, and
  a VM that dies first takes the rest with it. So a resume never trusts the state file:
  :func:`resume_point` takes the newest checkpoint that passes the full check
  (:func:`helpers.train.checkpoints.latest_complete`) on local disk and on Drive, uses the newer of the
  two, and copies a Drive one to local disk first. Because ``keep`` checkpoints stay on Drive,
  an upload that was cut off still has a complete predecessor.
* **Training never waits on Drive**, except once when a run ends: the run's last checkpoint
  must be on Drive before the stage reports where it got to. While a copy runs, newer
  checkpoints wait and only the newest is copied next. When a copy ends, Drive is behind by at
  most ``checkpoint_every`` steps plus that copy's time; just before it ends, Drive still holds
  the previous copy, so a disconnect at any moment loses at most ``checkpoint_every`` steps
  plus the time of two copies (one copy, when a copy is faster than ``checkpoint_every`` steps).
  Only a faster link or a smaller checkpoint shrinks that: copies share one upload link.
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from helpers import colab
from helpers.atomic import atomic_path, discard, is_partial
from helpers.train import checkpoints as ckpts
from helpers.train import drive_copy
from helpers.train.stages import EVENTS_DIR, STAGE_FILE
from helpers.errors import UserError

SNAPSHOT_DIR = ".mirror"        # hard links of the checkpoint being copied (CheckpointManager may delete it)
_STATE_RE = re.compile(r'^model_checkpoint_path:\s*"([^"]+)"', re.M)


class MirrorError(UserError, RuntimeError):
    """The run's last checkpoint could not be copied to the workspace."""


# ----------------------------------------------------------------------------- where

def local_checkpoint_root(workspace_root, setting=None) -> Path | None:
    """Local scratch folder for checkpoints of the workspace at ``workspace_root``, or None.

    ``setting``: a folder, ``False``/``"off"`` (save straight into the workspace), or None for
    the default: on for a workspace on Colab's Drive mount (local folder
    :data:`helpers.colab.LOCAL_CHECKPOINTS`) and off elsewhere (the workspace already is a local
    disk). The caller decides the setting (``train_stage``'s ``local_checkpoints``, else
    ``$NUCLEI_LOCAL_CHECKPOINTS``: :func:`helpers.train.training.local_checkpoint_setting`).
    """
    if setting is None:
        if not colab.on_drive(workspace_root):
            return None
        setting = colab.LOCAL_CHECKPOINTS
    if setting is False or str(setting).lower() in ("", "0", "off", "no", "false", "none"):
        return None
    # one folder per workspace, so two workspaces in one runtime never share checkpoints
    tag = hashlib.sha1(str(Path(workspace_root).resolve()).encode()).hexdigest()[:8]
    return Path(setting).expanduser().resolve() / f"{Path(workspace_root).name}-{tag}"


# ----------------------------------------------------------------------------- copying

class CopyAbandoned(Exception):
    """A copy stopped half-way because a newer checkpoint makes it pointless."""


def copy_file(src: Path, dst: Path, abandon=None) -> None:
    """Copy one file's bytes, in chunks; ``abandon()`` True stops it (:class:`CopyAbandoned`).

    Looked up at call time, so a test can stand in a slower or failing one.
    """
    with open(src, "rb") as f, open(dst, "wb") as g:
        while chunk := f.read(8 << 20):
            if abandon is not None and abandon():
                raise CopyAbandoned(str(src))
            g.write(chunk)


def _fsync_dir(path: Path) -> None:
    """fsync a folder's entries where the file system allows it (Drive's FUSE mount may not)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES, errno.EPERM):
            raise
    finally:
        os.close(fd)


def durable_copy(src: Path, dst: Path, abandon=None) -> int:
    """Copy ``src`` to ``dst`` through the project's atomic write (temp file, fsync, rename)."""
    with atomic_path(dst) as tmp:
        copy_file(src, tmp, abandon=abandon)
    return dst.stat().st_size


def checkpoint_files(prefix: Path) -> list[Path]:
    """The files of ``ckpt-N``, data shards first and the index last (the order to write them)."""
    prefix = Path(prefix)
    return [*ckpts.data_files(prefix), prefix.with_name(prefix.name + ".index")]


def copy_checkpoint(prefix, dest_dir, abandon=None) -> tuple[Path, int]:
    """Copy checkpoint ``prefix`` into ``dest_dir``: complete or absent there, never torn.

    Returns the new prefix and the bytes copied. A checkpoint of the same name already in
    ``dest_dir`` loses its index first, so it is never read with new data under an old index.
    """
    prefix, dest_dir = Path(prefix), Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    discard(dest_dir / f"{prefix.name}.index")
    nbytes, placed = 0, []
    try:
        for f in checkpoint_files(prefix):
            nbytes += durable_copy(f, dest_dir / f.name, abandon)
            placed.append(dest_dir / f.name)
    except BaseException:
        for f in placed:  # data without its index: never loadable, and it would hold Drive's space
            discard(f)
        raise
    _fsync_dir(dest_dir)
    return dest_dir / prefix.name, nbytes


def remove_leftovers(folder) -> list[str]:
    """Remove temp files of a copy that a killed run left in ``folder``, and data files
    without an index (a copy cut off between its data and its index); return their names."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    gone = []
    indexed = {p.name for _, p in ckpts.list_checkpoints(folder)}
    for f in folder.iterdir():
        orphan = (f.name.startswith("ckpt-") and ".data-" in f.name
                  and f.name.split(".data-")[0] not in indexed)
        if f.is_file() and ((f.name.startswith(".") and is_partial(f)) or orphan):
            discard(f)
            gone.append(f.name)
    shutil.rmtree(folder / SNAPSHOT_DIR, ignore_errors=True)
    return gone


def prune(folder, keep: int) -> list[int]:
    """Remove all but the newest ``keep`` checkpoints in ``folder`` (after the state file
    was rewritten to the newest); return the removed steps. Each file is emptied before it is
    deleted (:func:`helpers.atomic.discard`): on Drive, a deleted file's bytes would stay in the
    Trash and count against the quota."""
    found = ckpts.list_checkpoints(folder)
    old = found[:-keep] if keep > 0 else []
    for step, prefix in old:
        for f in checkpoint_files(prefix)[::-1]:  # index first: never a half-removed checkpoint
            discard(f)
    if old:
        ckpts.write_state(folder)
    return [s for s, _ in old]


def mirror_tree(src_dir, dest_dir) -> int:
    """Bring new or grown files of ``src_dir`` (TensorBoard event files) to ``dest_dir``; return
    the bytes written. A grown file gets only its new bytes appended (:func:`append_growth`)."""
    src_dir, dest_dir = Path(src_dir), Path(dest_dir)
    n = 0
    for f in sorted(src_dir.rglob("*")) if src_dir.is_dir() else []:
        if not f.is_file() or is_partial(f):
            continue
        target = dest_dir / f.relative_to(src_dir)
        if not target.is_file() or target.stat().st_size != f.stat().st_size:
            target.parent.mkdir(parents=True, exist_ok=True)
            n += append_growth(f, target) if target.is_file() else durable_copy(f, target)
    return n


def append_growth(src: Path, target: Path, check: int = 4096) -> int:
    """Append to ``target`` the bytes ``src`` has beyond it: an event file only grows, and a
    rewrite through Drive's mount would send the old copy, whole, to the Trash each time.
    When ``target`` is no prefix of ``src`` (its last ``check`` bytes differ: an append cut
    off), it is copied whole instead. Returns the bytes written."""
    have, size = target.stat().st_size, src.stat().st_size
    if have > size:
        return durable_copy(src, target)
    tail = max(0, have - check)
    with open(src, "rb") as f, open(target, "rb+") as g:
        f.seek(tail)
        g.seek(tail)
        prefix = f.read(have - tail) == g.read(have - tail)
        if prefix:
            g.write(f.read(size - have))  # both are at `have` now
            g.flush()
            os.fsync(g.fileno())
    return size - have if prefix else durable_copy(src, target)


def newest_saved(ckpt_dir) -> tuple[int, Path] | None:
    """The checkpoint TensorFlow's state file names in ``ckpt_dir`` (written after a save
    completes, so on the disk that wrote it the checkpoint is whole), or None."""
    state = Path(ckpt_dir) / "checkpoint"
    try:
        m = _STATE_RE.search(state.read_text())
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    if not m:
        return None
    prefix = Path(ckpt_dir) / Path(m.group(1)).name
    try:
        return ckpts.checkpoint_step(prefix), prefix
    except ValueError:
        return None


# ----------------------------------------------------------------------------- resume

def prepare_local(local_dir, remote_dir) -> None:
    """Make ``local_dir`` belong to the stage in ``remote_dir``: a local folder left by another
    run of this stage name (its ``stage.json`` differs, or the stage was restarted) is moved
    aside as ``<stage>.stale`` so it never mixes in; and a killed copy's leftovers go."""
    local_dir, remote_dir = Path(local_dir), Path(remote_dir)
    mine, theirs = local_dir / STAGE_FILE, remote_dir / STAGE_FILE
    if local_dir.is_dir() and not (mine.is_file() and theirs.is_file()
                                   and mine.read_bytes() == theirs.read_bytes()):
        stale = local_dir.with_name(local_dir.name + ".stale")
        shutil.rmtree(stale, ignore_errors=True)  # our own scratch copy, never user data
        os.replace(local_dir, stale)
    remove_leftovers(local_dir)
    remove_leftovers(remote_dir)
    if theirs.is_file():
        local_dir.mkdir(parents=True, exist_ok=True)
        durable_copy(theirs, mine)


def resume_point(local_dir, remote_dir) -> tuple[tuple[int, Path] | None, str]:
    """The checkpoint to resume from: the newer complete one of local disk and Drive.

    Returns ``((step, prefix), where)`` with ``where`` = ``"local"`` or ``"drive"``, or
    ``(None, "none")``. Torn checkpoints on either side are set aside with a warning
    (:func:`helpers.train.checkpoints.latest_complete`). On a tie, local disk wins (no copy needed).
    """
    local_dir, remote_dir = Path(local_dir), Path(remote_dir)
    remote = ckpts.latest_complete(remote_dir) if remote_dir.is_dir() else None
    local = ckpts.latest_complete(local_dir) if local_dir.is_dir() else None
    if remote and (local is None or remote[0] > local[0]):
        return remote, "drive"
    if local:
        return local, "local"
    return None, "none"


def bring_local(prefix, local_dir) -> Path:
    """Bring a Drive checkpoint to local disk, whole (a compact copy expanded:
    :func:`helpers.train.drive_copy.expand`), and point TensorFlow's state file there at it,
    so CheckpointManager restores it; return the local prefix."""
    if drive_copy.is_compact(prefix):
        local_prefix = drive_copy.expand(prefix, Path(local_dir) / Path(prefix).name)
    else:
        local_prefix, _ = copy_checkpoint(prefix, local_dir)
    ckpts.write_state(local_dir)
    return local_prefix


# ----------------------------------------------------------------------------- the thread

@dataclass
class Copy:
    step: int
    nbytes: int
    seconds: float


class CheckpointMirror:
    """Copy the newest checkpoint saved in ``local_dir`` to ``remote_dir``, in the background.

    ``start()`` begins watching TensorFlow's state file in ``local_dir``; ``close()`` copies
    what is newest at that moment, waits for it, and raises :class:`MirrorError` if the last
    copy failed. Use as a context manager. A copy that fails (Drive full, mount gone) is
    reported with a warning and retried with the next checkpoint.
    """

    def __init__(self, local_dir, remote_dir, keep: int = 3, poll_s: float = 0.5, compact: bool = True,
                 base: bool = False):
        self.local_dir, self.remote_dir = Path(local_dir), Path(remote_dir)
        self.keep, self.poll_s = keep, poll_s
        self.compact = compact  # copy only what a resume needs (helpers.train.drive_copy)
        self.use_base = base    # a stage with frozen weights: they go to Drive once, in its base
        self.base: drive_copy.Base | None = None
        self.copies: list[Copy] = []
        self.error: BaseException | None = None
        newest = ckpts.list_checkpoints(self.remote_dir)
        self.mirrored_step: int | None = newest[-1][0] if newest else None
        self.copying_step: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "CheckpointMirror":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close(raise_error=exc[0] is None)

    def start(self) -> "CheckpointMirror":
        self.remote_dir.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="checkpoint-mirror", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.mirror_newest(quiet=False)

    def mirror_newest(self, quiet: bool = True) -> Copy | None:
        """Copy the newest locally saved checkpoint if Drive does not have it yet."""
        newest = newest_saved(self.local_dir)
        if newest is None or (self.mirrored_step is not None and newest[0] <= self.mirrored_step):
            return None
        step, prefix = newest
        self.copying_step = step
        t0 = time.perf_counter()
        try:
            snap = self._snapshot(prefix)
            if snap is None:
                return None  # deleted by CheckpointManager before we got to it: a newer one exists
            if self.compact:
                snap = self._compacted(snap)
            _, nbytes = copy_checkpoint(snap, self.remote_dir, abandon=self._superseded(step))
            ckpts.write_state(self.remote_dir)
            prune(self.remote_dir, self.keep)
            mirror_tree(self.local_dir / EVENTS_DIR, self.remote_dir / EVENTS_DIR)
            self.error = None
        except CopyAbandoned:
            return None  # the run is ending and a newer checkpoint waits: copy that one instead
        except Exception as e:  # noqa: BLE001 - reported, retried with the next checkpoint
            self.error = e
            if not quiet:
                warnings.warn(f"could not copy {prefix.name} to {self.remote_dir} ({type(e).__name__}: "
                              f"{e}); training goes on and the next checkpoint is tried", stacklevel=2)
            return None
        finally:
            self.copying_step = None
            shutil.rmtree(self.local_dir / SNAPSHOT_DIR, ignore_errors=True)
        copy = Copy(step, nbytes, time.perf_counter() - t0)
        self.copies.append(copy)
        self.mirrored_step = step
        return copy

    def _compacted(self, snap: Path) -> Path:
        """The Drive copy of the snapshot ``snap``, written beside it (and the stage's base,
        sent to Drive first when the stage has none there yet)."""
        if self.use_base and self.base is None:
            self.base = drive_copy.read_base(self.remote_dir)
            if self.base is None:
                local = drive_copy.make_base(snap, snap.parent / drive_copy.BASE_DIR / snap.name)
                remote, _ = copy_checkpoint(local.prefix, self.remote_dir / drive_copy.BASE_DIR)
                self.base = drive_copy.Base(remote, local.token, local.digests)
        return drive_copy.compact(snap, snap.parent / "compact" / snap.name, base=self.base)

    def _superseded(self, step: int):
        """While the run ends (``close``), a copy of ``step`` is not worth finishing when a
        newer checkpoint waits: the end of a run then waits for one copy, not two. During
        training every copy finishes, or with a slow Drive none ever would."""
        def abandon() -> bool:
            newest = newest_saved(self.local_dir) if self._stop.is_set() else None
            return newest is not None and newest[0] > step
        return abandon

    def _snapshot(self, prefix: Path) -> Path | None:
        """Hard links of ``prefix``'s files, safe from CheckpointManager's deletions."""
        snap_dir = self.local_dir / SNAPSHOT_DIR
        shutil.rmtree(snap_dir, ignore_errors=True)
        snap_dir.mkdir()
        files = checkpoint_files(prefix)
        if not files[-1].exists():
            return None
        for f in files:
            try:
                os.link(f, snap_dir / f.name)
            except FileNotFoundError:
                return None
            except OSError:  # no hard links on this file system: copy instead
                shutil.copyfile(f, snap_dir / f.name)
        return snap_dir / prefix.name

    @property
    def last_copy_seconds(self) -> float:
        return self.copies[-1].seconds if self.copies else 0.0

    def close(self, raise_error: bool = True) -> None:
        """Stop watching, copy the newest checkpoint now, and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.mirror_newest()
        mirror_tree(self.local_dir / EVENTS_DIR, self.remote_dir / EVENTS_DIR)
        newest = newest_saved(self.local_dir)
        if raise_error and newest and (self.mirrored_step is None or self.mirrored_step < newest[0]):
            raise MirrorError(
                f"{newest[1]} is saved on this runtime's disk but could not be copied to "
                f"{self.remote_dir} ({type(self.error).__name__}: {self.error}). Free space on "
                "Drive or remount it, then re-run: training resumes from the local copy while "
                "this runtime lives.") from self.error


def describe(mirror: CheckpointMirror) -> str:
    """One line for the notebook: what went to Drive and how long copies took."""
    if not mirror.copies:
        return f"checkpoints on Drive: {mirror.mirrored_step if mirror.mirrored_step is not None else 'none'}"
    secs = [c.seconds for c in mirror.copies]
    mb = mirror.copies[-1].nbytes / 1e6
    base = (f"; the stage's unchanged weights went once, in {mirror.base.prefix.parent.name}/"
            if mirror.base is not None else "")
    return (f"copied {len(mirror.copies)} checkpoints to Drive in the background, only what a resume needs "
            f"({mb:.1f} MB the last, {sum(secs) / len(secs):.1f} s per copy{base}); newest on Drive: "
            f"ckpt-{mirror.mirrored_step}")
