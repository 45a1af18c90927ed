"""A folder that treats deleted files as Google Drive's mount does: their bytes go to a Trash.

On Colab's Drive mount a deleted file is moved to Drive's Trash, and the Trash counts against the
Drive quota (minimaxir/gpt-2-simple#155, voicepaw/so-vits-svc-fork#474). A file replaced by a
rename onto it is taken as deleted too (the worst case). :class:`FakeDrive` patches ``os.unlink``,
``os.remove``, ``os.replace`` and ``os.rename`` for paths inside its folder, so the project's own
code runs unchanged and whatever it deletes there lands in ``trash`` with the bytes it had.
"""
from __future__ import annotations

import itertools
import os
from pathlib import Path


class FakeDrive:
    def __init__(self, root: Path, monkeypatch):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.trash = self.root.with_name(self.root.name + ".Trash")  # not inside the mounted folder
        self.trash.mkdir(exist_ok=True)
        self._n = itertools.count()
        self._unlink, self._replace, self._rename = os.unlink, os.replace, os.rename
        monkeypatch.setattr(os, "unlink", self.unlink)
        monkeypatch.setattr(os, "remove", self.unlink)
        monkeypatch.setattr(os, "replace", self.replace)
        monkeypatch.setattr(os, "rename", self.rename)

    def _inside(self, path) -> bool:
        try:
            return Path(os.path.abspath(path)).is_relative_to(self.root)
        except TypeError:  # an fd
            return False

    def _to_trash(self, path) -> None:
        path = Path(path)
        self._rename(path, self.trash / f"{next(self._n):06d}-{path.name}")

    def unlink(self, path, *, dir_fd=None):
        if dir_fd is None and self._inside(path) and Path(path).is_file() and not Path(path).is_symlink():
            return self._to_trash(path)
        return self._unlink(path, dir_fd=dir_fd)

    def replace(self, src, dst, *, src_dir_fd=None, dst_dir_fd=None):
        if dst_dir_fd is None and self._inside(dst) and Path(dst).is_file():
            self._to_trash(dst)
        return self._replace(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)

    def rename(self, src, dst, *, src_dir_fd=None, dst_dir_fd=None):
        if dst_dir_fd is None and self._inside(dst) and Path(dst).is_file():
            self._to_trash(dst)
        return self._rename(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)

    @staticmethod
    def _bytes(folder: Path) -> int:
        return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())

    @property
    def live_bytes(self) -> int:
        return self._bytes(self.root)

    @property
    def trash_bytes(self) -> int:
        return self._bytes(self.trash)

    @property
    def used_bytes(self) -> int:
        """What counts against the quota: live files and the Trash."""
        return self.live_bytes + self.trash_bytes
