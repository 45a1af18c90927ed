"""Atomic file writes: write a temp file in the same folder, then rename it.

A reader never sees a half-written file: either the old content (or nothing)
or the complete new content. Temp files carry a ``.partial`` marker so a file
left by an interrupted run is recognisable and is never mistaken for output.

The file gets the mode an ordinary ``open(path, "w")`` would give it (0644 under the usual
umask 022), not ``mkstemp``'s private 0600: shards, manifests and answers are data a user
may share or inspect.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from helpers.errors import UserError

PARTIAL_MARKER = ".partial"


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (thread-safe)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no /proc: the classic swap (briefly changes it)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode of a new ordinary file: 0o666 minus the umask (0o644 under umask 022)."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    """The mode of a new ordinary folder: 0o777 minus the umask (``mkdtemp`` makes 0o700)."""
    return 0o777 & ~_umask()


def is_partial(path: str | os.PathLike) -> bool:
    """True for a temp file left by an interrupted atomic write."""
    return PARTIAL_MARKER in Path(path).name


class FolderNotWritable(UserError, OSError):
    """A write failed because its folder is full or read-only; the message names the folder."""


_FULL = {errno.ENOSPC, errno.EDQUOT}
_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}


def _explained(e: OSError, path: Path, need: int | None) -> OSError:
    """``e`` as a :class:`FolderNotWritable` naming the folder (and the space), if it is one."""
    folder = path.parent
    if e.errno in _FULL:
        try:
            free = f"{_size(shutil.disk_usage(folder).free)} free"
        except OSError:
            free = "no space left"
        needs = f"; this file needs {_size(need)}" if need else ""
        return FolderNotWritable(e.errno, f"{folder} is full ({free}{needs}) while writing {path.name}: free some "
                                          "space there (on Google Drive, empty the Trash too: it counts "
                                          "against the quota), then run the cell again")
    if e.errno in _READ_ONLY:
        return FolderNotWritable(e.errno, f"{folder} is read-only (cannot write {path.name}): use a workspace "
                                          "you can write to (workspace_root), or make this one writable")
    return e


_ERRNO_TEXT = {"No space left on device": errno.ENOSPC, "Disk quota exceeded": errno.EDQUOT,
               "Read-only file system": errno.EROFS, "Permission denied": errno.EACCES}


def folder_error(exc: BaseException, path: str | os.PathLike, need: int | None = None) -> OSError | None:
    """A :class:`FolderNotWritable` for an error whose message says the disk is full or read-only
    (TensorFlow's file errors carry the OS's text, not an errno); None for any other error."""
    code = getattr(exc, "errno", None) if isinstance(exc, OSError) else None
    code = code or next((c for text, c in _ERRNO_TEXT.items() if text in str(exc)), None)
    if code is None:
        return None
    out = _explained(OSError(code, str(exc)), Path(path), need)
    return out if isinstance(out, FolderNotWritable) else None


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{max(1, round(n / 1e3))} KB"


def discard(path: str | os.PathLike) -> bool:
    """Delete a file so that no copy of its bytes is kept in a trash folder; True if it existed.

    Colab's Drive mount moves a deleted file to Drive's Trash, and the Trash counts against the
    Drive quota (minimaxir/gpt-2-simple#155: a Colab run that deleted old checkpoints through the
    mount filled the user's Drive). A file emptied first goes to the Trash with 0 bytes (the
    workaround merged in voicepaw/so-vits-svc-fork#581 and sce-tts/TTS#1); its old content is
    only an older revision of it then, which Drive purges by itself and does not count (only
    revisions marked "keep forever" do: Drive API guide "Manage file revisions").
    A file with other hard links keeps its bytes for them: it is only unlinked.
    """
    path = Path(path)
    try:
        if path.stat().st_nlink == 1:
            with contextlib.suppress(OSError):  # a read-only file system: the unlink says so
                os.truncate(path, 0)
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def discard_tree(path: str | os.PathLike) -> bool:
    """Delete a folder (or a file) and everything under it, each file by :func:`discard` (nothing
    kept in Drive's Trash); True if it existed."""
    path = Path(path)
    if not path.is_dir():
        return discard(path)
    for root, _, files in os.walk(path):
        for name in files:
            discard(Path(root) / name)
    shutil.rmtree(path, ignore_errors=True)
    return True


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, need: int | None = None) -> Iterator[Path]:
    """Yield a temp path next to ``path``; rename it onto ``path`` on success.

    The caller writes the temp path however it likes (a TFRecordWriter, a
    zipfile, ...). On an exception the temp file is removed and ``path`` is
    left untouched. A full or read-only folder raises :class:`FolderNotWritable`
    naming it (``need``: the bytes the file needs, when known).
    """
    path = Path(path)
    tmp_path = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=PARTIAL_MARKER, dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        os.chmod(tmp_path, file_mode())  # mkstemp makes it 0600
        yield tmp_path
        with open(tmp_path, "rb+") as f:  # make the bytes durable before the rename
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException as e:
        if tmp_path is not None:
            with contextlib.suppress(OSError):
                discard(tmp_path)  # a cut copy on Drive leaves no bytes in its Trash
        explained = _explained(e, path, need) if isinstance(e, OSError) else e
        if explained is not e:
            raise explained from e
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` atomically; a file that already holds exactly ``data`` is left as it is
    (nothing that has not changed is written: a finished workspace reads from a read-only copy)."""
    path = Path(path)
    with contextlib.suppress(OSError):
        if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
            return path
    with atomic_path(path, need=len(data)) as tmp:
        tmp.write_bytes(data)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def remove_stale_partials(dest: str | os.PathLike, quiet: bool = False) -> list[str]:
    """Remove the temp folders ``.<name>.<random>.partial`` that a killed run making the folder
    ``dest`` (``tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial")`` + rename) left next to it.

    Only folders with exactly that pattern go; a user's own files never match it. Returns their names.
    """
    dest = Path(dest)
    if not dest.parent.is_dir():
        return []
    pattern = re.compile(rf"^\.{re.escape(dest.name)}\.[A-Za-z0-9_]+{re.escape(PARTIAL_MARKER)}$")
    gone = []
    for p in sorted(dest.parent.iterdir()):
        if pattern.match(p.name) and p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
            gone.append(p.name)
    if gone and not quiet:
        print(f"removed {len(gone)} temp folder(s) left by an interrupted run in {dest.parent}: {gone[:3]}")
    return gone


# A temp file or folder of ours (``.<name>.<random>.partial``, ``.<name>.partial``, papermill's
# ``.<name>.<random>.partial.ipynb``) untouched this long belongs to a run that was killed: a live
# writer keeps writing it, and our writes take seconds to minutes.
LEFTOVER_AGE_S = 30 * 60
_LEFTOVER_NAME = re.compile(rf"^\..+{re.escape(PARTIAL_MARKER)}(\.[A-Za-z0-9]+)?$")


def is_leftover(path: Path, now: float, min_age_s: float = LEFTOVER_AGE_S) -> bool:
    """Whether ``path`` is a temp file or folder of ours, untouched for ``min_age_s``."""
    if not _LEFTOVER_NAME.match(path.name) or path.is_symlink():
        return False
    try:
        return now - path.stat().st_mtime >= min_age_s
    except OSError:
        return False


def sweep_leftovers(root: str | os.PathLike, min_age_s: float = LEFTOVER_AGE_S) -> list[Path]:
    """Delete every temp file and folder of ours under ``root`` that a killed run left behind
    (:func:`is_leftover`), each file emptied first (nothing in Drive's Trash); the one place
    where they are cleaned up, called when a workspace is opened. Returns what went."""
    import time

    now, gone = time.time(), []
    for folder, dirs, files in os.walk(root):
        for name in [*files, *dirs]:
            path = Path(folder) / name
            if is_leftover(path, now, min_age_s):
                discard_tree(path)
                gone.append(path)
        dirs[:] = [d for d in dirs if (Path(folder) / d).exists()]
    return gone

