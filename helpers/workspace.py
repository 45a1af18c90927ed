"""Where the workflow keeps its files.

On Colab the workspace is by default a folder on Google Drive (mounted when it is
first needed), so shards, checkpoints and predictions survive a disconnect; a
``workspace_root`` outside Drive (e.g. ``/content/nuclei_workspace``) needs no
mount but is lost at disconnect. Elsewhere it is ``$NUCLEI_WORKSPACE`` or
``./workspace``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from helpers import colab
from helpers.atomic import sweep_leftovers
from helpers.errors import UserError

SUBFOLDERS = ("data", "shards", "checkpoints", "predictions", "submission", "runs")
# TensorFlow's file functions read these in a path as a pattern (its checkpoint reader globs for
# the data files), so a checkpoint under such a folder cannot be found, though it is whole.
TF_PATTERN_CHARACTERS = "[]*?"


class WorkspaceError(UserError, ValueError):
    """A workspace folder that cannot be used: the message names it and says what to do."""


def check_folder_path(path: str | os.PathLike, what: str = "the workspace") -> Path:
    """``path`` as a Path when TensorFlow can read files under it and it is not a file;
    :class:`WorkspaceError` otherwise."""
    path = Path(path)
    bad = sorted({c for c in str(path) if c in TF_PATTERN_CHARACTERS})
    if bad:
        raise WorkspaceError(
            f"{path}: TensorFlow reads {' '.join(bad)} in a path as a pattern, so it could not find the "
            f"checkpoints of {what} there. Rename the folder, or choose another one (workspace_root, "
            f"--workspace), without any of [ ] * ? in its path.")
    if path.exists() and not path.is_dir():
        raise WorkspaceError(f"{path} is a file, not a folder: give a folder for {what} "
                             "(workspace_root, --workspace); it is created if it does not exist")
    return path


@dataclass(frozen=True)
class Workspace:
    root: Path

    @property
    def data(self) -> Path:  # the unpacked dataset (course layout)
        return self.root / "data"

    @property
    def shards(self) -> Path:  # TFRecord shards + index.json
        return self.root / "shards"

    @property
    def checkpoints(self) -> Path:  # checkpoints/<stage>/
        return self.root / "checkpoints"

    @property
    def predictions(self) -> Path:  # predictions/<model>/<image>[.<tta>].json
        return self.root / "predictions"

    @property
    def submission(self) -> Path:  # answer.json, answer.zip
        return self.root / "submission"

    @property
    def runs(self) -> Path:  # executed notebooks and other run records
        return self.root / "runs"

    def create(self) -> "Workspace":
        for name in SUBFOLDERS:
            (self.root / name).mkdir(parents=True, exist_ok=True)
        return self


def get_workspace(root: str | os.PathLike | None = None, create: bool = True) -> Workspace:
    """The workspace at ``root`` (or the default one), with its subfolders made.

    On Colab, Drive is mounted first if (and only if) the workspace is on it.
    """
    path = check_folder_path(Path(root).expanduser() if root else colab.default_workspace())
    colab.ensure_drive(path)
    ws = Workspace(path.resolve())
    if not create:
        return ws
    ws.create()
    if ws.root not in _SWEPT:  # once a process: what killed runs left (helpers.atomic.sweep_leftovers)
        _SWEPT.add(ws.root)
        gone = sweep_leftovers(ws.root)
        if gone:
            print(f"removed {len(gone)} temp file(s) that interrupted runs left in {ws.root}: "
                  f"{[str(p.relative_to(ws.root)) for p in gone[:3]]}{' ...' if len(gone) > 3 else ''}")
    return ws


_SWEPT: set[Path] = set()


def as_workspace(workspace) -> Workspace:
    """``workspace`` itself when it is a :class:`Workspace`, else ``get_workspace(workspace)``
    (a path, or None for the default one): what the helpers' ``workspace`` arguments accept."""
    return workspace if isinstance(workspace, Workspace) else get_workspace(workspace)
