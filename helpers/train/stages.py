"""A stage's folder, ``ws.checkpoints/<stage>/``, and its record ``stage.json``.

``stage.json`` holds the profile, the planned steps and the config fingerprint the stage's
checkpoints were trained with (written once, by :mod:`helpers.train.training`); prediction rebuilds
the model from it (:mod:`helpers.infer.model`). :func:`stage_status` says how far a stage got.
"""
from __future__ import annotations

import json
from pathlib import Path

from helpers.train import checkpoints as ckpts
from helpers.train import config as cfglib
from helpers.workspace import as_workspace

STAGE_FILE = "stage.json"


class StageRecordError(RuntimeError):
    """A stage's ``stage.json`` exists but cannot be read."""


def stage_dir(workspace, stage: str) -> Path:
    cfglib.stage_kind(stage)
    return as_workspace(workspace).checkpoints / stage


def read_stage_info(workspace, stage: str) -> dict | None:
    """The stage's ``stage.json`` (profile, planned steps, fingerprint), or None."""
    return read_record(stage_dir(workspace, stage) / STAGE_FILE)


def read_record(path: Path) -> dict | None:
    """A ``stage.json`` as a dict; None when absent; :class:`StageRecordError` when damaged."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
        if not isinstance(info, dict):
            raise ValueError("not a JSON object")
        return info
    except (ValueError, UnicodeDecodeError) as e:
        raise StageRecordError(
            f"{path} is damaged ({type(e).__name__}: {str(e)[:120]}). It records the config the "
            f"checkpoints beside it were trained with. Restore it (on Drive: right-click the file, "
            f"Manage versions), or move {path.parent} away to train the stage again.") from e


def stage_status(workspace, stage: str) -> str:
    """One line: how far a stage got (for notebooks)."""
    sdir = stage_dir(workspace, stage)
    try:
        info = read_stage_info(workspace, stage)
    except StageRecordError as e:
        return f"{stage}: record damaged: {e}"
    latest = ckpts.latest_complete(sdir, repair=False, deep=False) if sdir.is_dir() else None
    if not info:
        return f"{stage}: not started"
    step = latest[0] if latest else 0
    state = "finished" if step >= info["planned_steps"] else "in progress"
    return f"{stage} [{info['profile']}]: {state}, step {step}/{info['planned_steps']}"
