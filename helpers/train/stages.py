"""A stage: its name parsed once, its folder ``ws.checkpoints/<stage>/`` and its record
``stage.json`` read once (:class:`Stage`).

``stage.json`` holds the profile, the planned steps and the config fingerprint the stage's
checkpoints were trained with (written once, by :mod:`helpers.train.training`); prediction rebuilds
the model from it (:mod:`helpers.infer.model`). :func:`stage_progress` says how far a stage got (:func:`stage_status`, as one line).
"""
from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from helpers.pixel_size import COURSE, PixelSize
from helpers.train import checkpoints as ckpts
from helpers.train import config as cfglib
from helpers.workspace import as_workspace
from helpers.errors import UserError

STAGE_FILE = "stage.json"
# Model Garden's train_lib writes the training summaries (TensorBoard events) to <model_dir>/train
EVENTS_DIR = "train"


class StageRecordError(UserError, RuntimeError):
    """A stage's ``stage.json`` exists but cannot be read."""


def stage_dir(workspace, stage: str) -> Path:
    return Stage.folder_of(workspace, stage)


def events_dir(workspace, stage: str) -> Path:
    """The stage's TensorBoard event files (losses, learning rate, s/step)."""
    return stage_dir(workspace, stage) / EVENTS_DIR


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


@dataclass(frozen=True)
class Stage:
    """One stage of a workspace, as training, prediction and the notebooks pass it around: its
    name parsed once (:func:`~helpers.train.config.stage_kind`), its folder, and its record
    ``stage.json`` read once, when it is opened (None: not started). A stage that writes its
    record gets a new ``Stage`` (:meth:`with_record`)."""

    name: str
    kind: str                   # "heads", "all" or "specialist"
    parent: str | None          # the stage whose final weights it starts from
    folder: Path
    record: dict | None = None

    @classmethod
    def open(cls, workspace, name: str) -> "Stage":
        """``name`` of ``workspace``, its record read (:class:`StageRecordError` when damaged)."""
        if isinstance(name, Stage):
            return name
        return cls._in(as_workspace(workspace).checkpoints, name)

    @classmethod
    def named(cls, workspace, name: str) -> "Stage":
        """``name`` parsed, its record not read yet (:meth:`read`): for a run that reads it once
        it holds the stage's lock."""
        kind = cfglib.stage_kind(name)
        return cls(name, kind, cfglib.PARENT_KIND[kind], as_workspace(workspace).checkpoints / name)

    @classmethod
    def trained_at(cls, folder) -> "Stage":
        """The trained stage in ``folder`` (``<workspace>/checkpoints/<stage>``, of any workspace),
        opened: a :class:`StageRecordError` saying what to do when it holds no trained stage."""
        folder = Path(str(folder)).expanduser()
        if not (folder / STAGE_FILE).is_file():
            raise StageRecordError(f"{folder} holds no trained stage (no {STAGE_FILE}): give the folder of a "
                                   "trained stage, such as <workspace>/checkpoints/all")
        try:
            stage = cls._in(folder.parent, folder.name)
        except cfglib.ConfigError as e:
            raise StageRecordError(f"{folder} is no stage's folder ({e}): give <workspace>/checkpoints/<stage>") from e
        if ckpts.latest_complete(folder, repair=False, deep=False) is None:
            raise StageRecordError(f"{folder} holds no complete checkpoint yet: train that stage first")
        return stage

    def read(self) -> "Stage":
        """This stage with its record read from its folder."""
        return self.with_record(read_record(self.record_path))

    @classmethod
    def _in(cls, checkpoints: Path, name: str) -> "Stage":
        kind = cfglib.stage_kind(name)
        return cls(name, kind, cfglib.PARENT_KIND[kind], checkpoints / name).read()

    @staticmethod
    def folder_of(workspace, name: str) -> Path:
        cfglib.stage_kind(name)  # an unknown name is a ConfigError, not a folder
        return as_workspace(workspace).checkpoints / name

    def open_parent(self) -> "Stage | None":
        """The parent stage, opened (its record read), or None for a heads stage."""
        return Stage._in(self.folder.parent, self.parent) if self.parent else None

    def with_record(self, record: dict | None) -> "Stage":
        return dataclasses.replace(self, record=record)

    @property
    def record_path(self) -> Path:
        return self.folder / STAGE_FILE

    @property
    def planned_steps(self) -> int | None:
        return int(self.record["planned_steps"]) if self.record else None

    @property
    def pixel_size(self) -> PixelSize:
        """The µm per pixel of the images the stage learnt from (its record; a stage recorded
        before pixel sizes were: the course data's 40x, all there was then)."""
        if self.record and "pixel_size_um" in self.record:
            return PixelSize(self.record["pixel_size_um"], self.record.get("pixel_size_from", ""))
        return COURSE

    def progress(self) -> "StageProgress":
        """How far the stage got, from the record it was opened with and its newest complete
        checkpoint."""
        if not self.record:
            return StageProgress(self.name, StageState.NOT_STARTED)
        latest = ckpts.latest_complete(self.folder, repair=False, deep=False) if self.folder.is_dir() else None
        step = latest[0] if latest else 0
        if step > self.planned_steps:
            return StageProgress(self.name, StageState.DAMAGED, step, self.planned_steps, self.record["profile"],
                                 f"its newest checkpoint, step {step}, is beyond the {self.planned_steps} steps "
                                 f"it planned: not written by its training (copied in?); move it out of {self.folder}")
        state = StageState.FINISHED if step >= self.planned_steps else StageState.IN_PROGRESS
        return StageProgress(self.name, state, step, self.planned_steps, self.record["profile"])


class StageState(enum.Enum):
    NOT_STARTED = "not started"
    IN_PROGRESS = "in progress"
    FINISHED = "finished"
    DAMAGED = "record damaged"


@dataclass(frozen=True)
class StageProgress:
    """How far a stage got: its state, newest complete step, planned steps and profile."""

    stage: str
    state: StageState
    step: int = 0
    planned_steps: int | None = None
    profile: str | None = None
    problem: str = ""

    def __str__(self) -> str:
        if self.state is StageState.DAMAGED:
            return f"{self.stage}: record damaged: {self.problem}"
        if self.state is StageState.NOT_STARTED:
            return f"{self.stage}: not started"
        return f"{self.stage} [{self.profile}]: {self.state.value}, step {self.step}/{self.planned_steps}"


def stage_progress(workspace, stage: str) -> StageProgress:
    """How far ``stage`` got, from its record and its newest complete checkpoint."""
    try:
        return Stage.open(workspace, stage).progress()
    except StageRecordError as e:
        return StageProgress(stage, StageState.DAMAGED, problem=str(e))


def stage_status(workspace, stage: str) -> str:
    """One line: how far a stage got (for notebooks)."""
    return str(stage_progress(workspace, stage))


# ----------------------------------------------------------------------------- one run per stage
LOCK_STALE_S = 600.0  # a lock from another machine not refreshed for this long is a dead run's


class StageBusy(UserError, RuntimeError):
    """Another live run is training the same stage in this workspace."""


class StageLock:
    """``ws.checkpoints/.<stage>.lock``: one run per stage folder, so two notebooks (or a notebook
    and a benchmark) never both save checkpoints and ``stage.json`` into it.

    The lock file is made with ``O_EXCL`` and holds the holder's host, pid and start time; the holder
    refreshes its time (:meth:`refresh`, at each training step). A lock whose holder is gone is
    taken over: on this machine, when its pid no longer runs; from another machine (two Colab
    runtimes on one Drive), when it was not refreshed for :data:`LOCK_STALE_S` seconds.
    """

    def __init__(self, workspace, stage: str):
        self.stage = stage
        self.path = as_workspace(workspace).checkpoints / f".{stage}.lock"
        self._last = 0.0

    def __enter__(self) -> "StageLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is not None and self._alive(holder):
                    raise StageBusy(
                        f"stage {self.stage!r} is being trained by another run ({holder.get('host')}, "
                        f"pid {holder.get('pid')}, since {holder.get('started')}): two runs of one stage "
                        f"would overwrite each other's checkpoints. Wait for it to end, or stop it (if it "
                        f"is a notebook: Runtime > Interrupt), then run this cell again. The lock is "
                        f"{self.path}.") from None
                self.path.unlink(missing_ok=True)  # a dead run's lock: take it over
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"host": socket.gethostname(), "pid": os.getpid(),
                           "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, f)
            return self
        raise StageBusy(f"could not take the lock {self.path}: another run keeps taking it")

    def refresh(self, every_s: float = 30.0) -> None:
        """Mark the lock alive (its modification time), at most every ``every_s`` seconds."""
        now = time.monotonic()
        if now - self._last >= every_s:
            self._last = now
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def __exit__(self, *exc) -> None:
        holder = self._holder()
        if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)

    def _holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # being written this very moment, or damaged: judged by its age

    def _alive(self, holder: dict) -> bool:
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
            try:
                os.kill(holder["pid"], 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
            try:  # a killed process its parent has not reaped yet is a zombie: dead too
                with open(f"/proc/{holder['pid']}/stat") as f:
                    return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
            except (OSError, IndexError):
                return True
        try:
            return time.time() - self.path.stat().st_mtime < LOCK_STALE_S
        except FileNotFoundError:
            return False
