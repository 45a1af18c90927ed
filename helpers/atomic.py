"""Atomic file writes: write a temp file in the same folder, then rename it.

A reader never sees a half-written file: either the old content (or nothing)
or the complete new content. Temp files carry a ``.partial`` marker so a file
left by an interrupted run is recognisable and is never mistaken for output.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

PARTIAL_MARKER = ".partial"


def is_partial(path: str | os.PathLike) -> bool:
    """True for a temp file left by an interrupted atomic write."""
    return PARTIAL_MARKER in Path(path).name


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path next to ``path``; rename it onto ``path`` on success.

    The caller writes the temp path however it likes (a TFRecordWriter, a
    zipfile, ...). On an exception the temp file is removed and ``path`` is
    left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=PARTIAL_MARKER, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:  # make the bytes durable before the rename
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")
