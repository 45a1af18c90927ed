"""Stage runner: heads -> all -> specialist, on Model Garden's own trainer.

``train_stage`` builds the Model Garden ``MaskRCNNTask`` from a profile
(:mod:`helpers.train.config`) and runs it with Model Garden's
``OrbitExperimentRunner`` (the engine behind ``train_lib.run_experiment``):
its Trainer, Orbit Controller, ``tf.train.CheckpointManager`` and a
``tf.distribute`` strategy. We only decide *when* to stop (step target or
wall-clock budget) and *what* to start from.

Each stage lives in ``ws.checkpoints/<stage>/``:
  ckpt-N.index / ckpt-N.data-*   checkpoints (every ``checkpoint_every`` steps, last few kept)
  checkpoint                     TensorFlow's state file (latest + kept checkpoints)
  stage.json                     profile, planned steps, config fingerprint (written once)
  train/                         TensorBoard event files (one per run; `%tensorboard --logdir`)
  torn/                          checkpoints found incomplete (moved here, never loaded)

Re-running the same call resumes from the newest complete checkpoint, at the
same global step and the same point of the learning-rate schedule.

This module is the orchestration: a stage's plan comes from :mod:`helpers.train.stage_plan`
(profile, overrides, knobs inherited from its parent), its progress line, time budget and
divergence check from :mod:`helpers.train.train_progress`, the Drive mirror from
:mod:`helpers.train.mirror`.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from helpers.atomic import atomic_write_json
from helpers.data import shards
from helpers.train import checkpoints as ckpts
from helpers.train import config as cfglib
from helpers.train import drive_copy, mirror, stage_plan
from helpers.train.pretrained import resolve_pretrained
from helpers.train.stage_plan import NoTrainingData  # noqa: F401 - train_stage raises it, callers catch it here
from helpers.train.stages import STAGE_FILE, Stage, StageLock
from helpers.train.stages import StageBusy, StageRecordError, events_dir  # noqa: F401 - callers use them here
from helpers.train.stages import stage_progress, stage_status  # noqa: F401 - notebooks 02/03 use stage_status
from helpers.train.torch_convert import PretrainedWeightsUnavailable  # noqa: F401 - callers catch it here
from helpers.train.train_progress import StageProgress, announce
from helpers.train.train_progress import TrainingDiverged  # noqa: F401 - train_stage raises it, callers catch it here
from helpers.workspace import Workspace, as_workspace
from helpers.errors import InvalidRequest, UserError

__all__ = [  # what notebooks 02/03, tests and benchmarks use from here (some of it re-exported)
    "train_stage", "plan_stage", "resume_or_load", "build_task", "StageResult", "StageRun", "local_checkpoint_setting",
    "LOCAL_CHECKPOINTS_ENV", "STAGE_FILE", "events_dir", "stage_status", "resolve_pretrained",
    "StageConfigMismatch", "ParentStageNotFinished", "NoTrainingData", "TrainingDiverged",
    "PretrainedWeightsUnavailable", "StageBusy", "StageRecordError", "StageProgress",
]


class StageConfigMismatch(UserError, RuntimeError):
    """The stage folder holds checkpoints made with a different config."""


class ParentStageNotFinished(UserError, RuntimeError):
    """`all`/specialist needs the final checkpoint of the stage before it."""


@dataclass
class StageResult:
    stage: str
    profile: str
    status: str                 # "finished", "skipped (already finished)", "stopped: time budget", "stopped: stop_at_step"
    start_step: int             # global step when this run started (restored checkpoint)
    end_step: int               # global step reached
    planned_steps: int
    checkpoint: Path | None     # newest complete checkpoint after the run
    stage_dir: Path
    seconds: float = 0.0        # wall time of this call
    s_per_step: float | None = None   # mean over this run's steps, excluding the first (tracing)
    optimizer_iterations: int | None = None
    learning_rate: float | None = None  # LR at `end_step` (the schedule point)

    @property
    def finished(self) -> bool:
        return self.end_step >= self.planned_steps

    def __str__(self) -> str:
        sps = f", {self.s_per_step:.2f} s/step" if self.s_per_step else ""
        return (f"{self.stage} [{self.profile}]: {self.status} at step {self.end_step}/"
                f"{self.planned_steps} (started at {self.start_step}{sps}); "
                f"checkpoint {self.checkpoint}")


@dataclass
class StageRun:
    """One ``train_stage`` call, planned: what it trains (stage, parent, profile, config), where
    Model Garden saves (``model_dir``), and where it starts (``latest``: ``(step, prefix)`` or
    None, found ``where``: "local", "drive" or "none")."""

    ws: Workspace
    stage: Stage
    parent: Stage | None
    prof: object                  # helpers.train.config.Profile
    cfg: object                   # Model Garden's ExperimentConfig
    model_dir: Path
    latest: tuple | None
    where: str
    stop_at_step: int | None
    t_call: float                 # when the call began (time.perf_counter)

    @property
    def planned(self) -> int:
        return int(self.cfg.trainer.train_steps)

    @property
    def start(self) -> int:
        return self.latest[0] if self.latest else 0

    @property
    def target(self) -> int:
        return min(self.planned, self.stop_at_step) if self.stop_at_step else self.planned


def _resume(stage: Stage, model_dir: Path, cfg):
    """Where a run of ``stage`` starts: the stage record and the newest complete checkpoint.

    The whole resume policy (detectron2's ``resume_or_load``, for a runtime that may vanish):

    * The stage's folder (``sdir``, in the workspace: Drive on Colab) holds its record
      ``stage.json`` and its complete checkpoints; Model Garden saves into ``model_dir``.
    * ``model_dir == sdir``: resume from the newest complete checkpoint there.
    * ``model_dir`` on the runtime's local disk: from the newer complete checkpoint of local
      disk and workspace (:func:`helpers.train.mirror.resume_point`); a local folder left by another
      run of the stage is set aside first.
    * Torn checkpoints are set aside with a warning and the one before is used.
    * Checkpoints made under another config are refused (:class:`StageConfigMismatch`).

    Returns ``(latest, where)``: ``latest`` is ``(step, prefix)`` or None, ``where`` is
    ``"local"``, ``"drive"`` or ``"none"``.
    """
    info, sdir = stage.record, stage.folder
    if model_dir == sdir:
        latest = ckpts.latest_complete(sdir) if sdir.is_dir() else None
        where = "local" if latest else "none"
    else:
        mirror.prepare_local(model_dir, sdir)
        latest, where = mirror.resume_point(model_dir, sdir)
    if info and latest:
        diffs = ([] if info.get("fingerprint") == cfglib.fingerprint(cfg)
                 else cfglib.same_config(info.get("fingerprint_dict", {}), cfg))
        if diffs:
            shown = "\n  ".join(diffs[:12]) + ("\n  ..." if len(diffs) > 12 else "")
            raise StageConfigMismatch(
                f"stage {stage.name!r} in {sdir} was trained up to step {latest[0]} with profile "
                f"{info.get('profile')!r} and a different config; resuming would mix two runs. "
                f"Differences (stored -> now):\n  {shown}\nUse the original profile/steps/data, "
                f"or train under another stage name, or move {sdir} away to start over.")
    elif latest and not info:
        raise StageConfigMismatch(
            f"{sdir} holds checkpoints but no {STAGE_FILE}: it was not made by train_stage. "
            "Move it away or use another stage name.")
    return latest, where


def _publish(model_dir: Path, sdir: Path, keep: int) -> Path | None:
    """Make sure the newest checkpoint of ``model_dir`` is in the workspace; return its prefix there."""
    if model_dir != sdir:
        mirror.CheckpointMirror(model_dir, sdir, keep=keep).close()
    latest = ckpts.list_checkpoints(sdir)
    return latest[-1][1] if latest else None


def _parent_checkpoint(stage: Stage, parent: Stage) -> str:
    pdir, info = parent.folder, parent.record
    latest = ckpts.latest_complete(pdir) if pdir.is_dir() else None
    if not info or not latest or latest[0] < int(info["planned_steps"]):
        got = f"step {latest[0]}/{info['planned_steps']}" if (info and latest) else "no checkpoint"
        raise ParentStageNotFinished(
            f"stage {stage.name!r} starts from the final weights of {parent.name!r}, which is not finished "
            f"({got} in {pdir}). Run train_stage({parent.name!r}, ...) to the end first.")
    return str(latest[1])


def stage_summary(ws, profile: str, stage: str, steps: int | None = None,
                  checkpoint_every: int | None = None, start_from: str | None = None) -> str:
    """Notebooks 02/03: the profile's knobs with the steps this stage's run will use (the
    notebook's ``steps``, else a begun stage's recorded plan, else the profile's), the trained
    stage it fine-tunes (``start_from``), and how far the stage got; its record is read once."""
    progress = stage_progress(ws, stage)
    knobs = cfglib.describe(profile, stage, steps or progress.planned_steps, checkpoint_every)
    start = (f"\nstart: every weight of the trained stage {start_from} (start_from), with its architecture, "
             "in place of the profile's start") if start_from else ""
    return f"{knobs}{start}\n{progress}"


def plan_stage(stage: str, profile: str = "demo", workspace=None, steps: int | None = None,
               image_ids=None, organs=None, train_files: Sequence[str] | None = None,
               splits: Sequence[str] = ("train",), accelerator: str | None = None,
               init_modules=None, **profile_overrides):
    """The profile, ExperimentConfig (without init checkpoint) and folder of a stage.

    :data:`~helpers.train.stage_plan.INHERITED_KNOBS` (``from_scratch``, the input knobs, and
    ``pretrained`` and ``mask_upsample``, which fix the architecture) default to the parent
    stage's (recorded in its ``stage.json``); ``from_scratch`` defaults to False for heads. A
    stage already begun keeps the :data:`~helpers.train.stage_plan.KEPT_KNOBS` its own
    ``stage.json`` records (:func:`~helpers.train.stage_plan.recorded_knob`), and its planned
    steps unless ``steps`` is given.
    """
    ws = as_workspace(workspace)
    st = Stage.open(ws, stage)
    prof, cfg = stage_plan.plan(ws, st, st.open_parent(), profile, steps=steps, image_ids=image_ids,
                                organs=organs, train_files=train_files, splits=splits, accelerator=accelerator,
                                init_modules=init_modules, **profile_overrides)
    return prof, cfg, st.folder


LOCAL_CHECKPOINTS_ENV = "NUCLEI_LOCAL_CHECKPOINTS"  # a folder, or "off"; unset: on only for a workspace on Drive


def local_checkpoint_setting(local_checkpoints=None):
    """``train_stage``'s ``local_checkpoints`` as given, else ``$NUCLEI_LOCAL_CHECKPOINTS``, else
    None (:func:`helpers.train.mirror.local_checkpoint_root`'s default): the one place it is read."""
    return os.environ.get(LOCAL_CHECKPOINTS_ENV) if local_checkpoints is None else local_checkpoints


def train_stage(stage: str, profile: str = "demo", workspace=None, steps: int | None = None,
                time_budget_s: float | None = None, stop_at_step: int | None = None,
                image_ids: Sequence[str] | None = None, organs: Sequence[str] | None = None,
                train_files: Sequence[str] | None = None, splits: Sequence[str] | None = None,
                from_scratch: bool | None = None, pretrained: str | None = None,
                init_checkpoint: str | None = None, init_modules=None, start_from: str | None = None, strategy=None,
                progress: bool = True, local_checkpoints=None, accelerator: str | None = None,
                checkpoint_every: int | None = None, **profile_overrides) -> StageResult:
    """Train (or resume, or skip) one stage with Model Garden; return what happened.

    Args:
      stage: ``"heads"`` (backbone frozen), ``"all"`` (everything, from the
        heads stage's final checkpoint) or ``"specialist-<name>"`` (from
        ``all``, on ``organs``/``image_ids``).
      profile: ``"colab"``, ``"cpu"`` or ``"demo"``.
      workspace: a Workspace, a path, or None for the default workspace.
      steps: planned global steps of the stage (the LR schedule spans them);
        default from the profile. Part of the stage's config fingerprint.
      time_budget_s: stop (with a checkpoint) before this many seconds have
        passed since the call; re-run to continue.
      stop_at_step: stop (with a checkpoint) at this global step; re-run to continue.
      image_ids / organs: training subset (specialist stages), via helpers.data.shards.select_shards.
      train_files: explicit shard paths instead (bypasses the workspace's shard index).
      splits: manifest splits to train on; default ("train",), and ("train", "val") for
        stage ``"final"``: the `all` stage again, on every labelled image, once the choices
        are made on validation (other data: the fingerprint check refuses to mix it into a
        stage already trained on "train" only).
      from_scratch: heads stage without pretrained weights: every layer trains (nothing is
        frozen) with the profile's ``scratch`` recipe (``Profile.scratch``). Later stages follow the
        heads stage's choice (None); it is part of the config fingerprint.
      pretrained: the heads stage's start, one of the profile's ``starts`` (``config.STARTS``):
        ``"coco"`` (torchvision's COCO Mask R-CNN, converted; the colab profile's default),
        ``"imagenet"`` (Model Garden's ImageNet ResNet) or ``"imagenet-torchvision"``. None: the
        profile's own. Each fixes the architecture its weights fit; later stages follow the
        heads stage's start.
      init_checkpoint: explicit checkpoint for a fresh heads stage instead of the start's
        download: a Model Garden ImageNet backbone, or a folder converted by
        :func:`helpers.train.torch_convert.convert`.
      init_modules: what to load from it; default the start's (``config.STARTS``).
      start_from: a trained stage's folder (``<workspace>/checkpoints/<stage>``, of this or another
        workspace) that a fresh heads stage fine-tunes: all its weights, its newest complete
        checkpoint, and its architecture and input knobs, as a parent stage's.
      strategy: None (automatic), "tpu", "mirrored", "default" or a Strategy.
      local_checkpoints: where Model Garden saves: a folder on the runtime's own disk whose
        newest checkpoint is copied to the workspace in the background, or False to save
        straight into the workspace. Default (None): ``$NUCLEI_LOCAL_CHECKPOINTS``, else local
        disk when the workspace is on Colab's Drive mount (see :mod:`helpers.train.mirror`).
      checkpoint_every: steps between checkpoints; default (None) the profile's (colab 25,
        cpu and demo 5). Not part of the config fingerprint: a stage may resume with another.
      accelerator: "gpu", "tpu" or "cpu": what the precision and the input's dtype are chosen
        for (float16 on a GPU when the profile's ``mixed_precision`` allows it); default: the
        runtime's. "gpu" on a CPU runs a GPU's code path there (the tests do).
      **profile_overrides: profile knobs, e.g. ``checkpoint_every=10``.
    """
    t_call = time.perf_counter()
    if checkpoint_every is not None:
        profile_overrides["checkpoint_every"] = checkpoint_every
    ws = as_workspace(workspace)
    named = Stage.named(ws, stage)
    if splits is None:
        splits = ("train", "val") if stage == cfglib.FINAL_STAGE else ("train",)
    local_checkpoints = local_checkpoint_setting(local_checkpoints)
    with StageLock(ws, stage) as lock:
        st = named.read()  # its record, read once, while no other run can write it
        start_from = _start_of(st, start_from)
        parent = _fine_tuned(st, start_from) if start_from else st.open_parent()
        if start_from:  # all of its weights, its newest complete checkpoint's (when the stage starts)
            init_modules = "all"
            if not st.record:
                init_checkpoint = str(ckpts.latest_complete(parent.folder, repair=False, deep=False)[1])
        prof, cfg = stage_plan.plan(ws, st, parent, profile, steps=steps, image_ids=image_ids, organs=organs,
                                    train_files=train_files, splits=splits, init_modules=init_modules,
                                    from_scratch=from_scratch, pretrained=pretrained, accelerator=accelerator,
                                    **profile_overrides)
        model_dir = _model_dir(ws, st, local_checkpoints)
        run = StageRun(ws, st, parent, prof, cfg, model_dir, *_resume(st, model_dir, cfg), stop_at_step, t_call)
        if run.latest and run.start >= run.target:
            return _nothing_to_do(run)
        resume_or_load(run, init_checkpoint)

        bar = StageProgress(stage, run.start, run.planned, enabled=progress, t0=t_call, budget_s=time_budget_s,
                            lock=lock)
        runner, strat = _start_runner(run, strategy, bar)
        announce(st, run.latest, run.where, run.start, run.planned, model_dir, mirrored=runner.mirror is not None)
        if runner.mirror is not None:
            runner.mirror.start()  # the copy to the workspace
        status = _train_loop(runner, strat, bar, run.target, fresh=not run.latest, model_dir=model_dir)
        if status == "finished" and run.target < run.planned:
            status = "stopped: stop_at_step"
        return _report(run, runner, status, bar)


def _start_of(st: Stage, start_from: str | None) -> str | None:
    """The trained stage ``st`` fine-tunes: ``start_from``, or the one its record says it started
    from (a resume needs not repeat it); another than the recorded one is an error."""
    recorded = (st.record or {}).get("start_from")
    if start_from and recorded and Path(start_from).expanduser().resolve() != Path(recorded).resolve():
        raise InvalidRequest(f"stage {st.name!r} was started from {recorded}; it cannot continue from {start_from}. "
                             f"Fine-tune that one in another workspace, or move {st.folder} away to start again.")
    return start_from or recorded


def _fine_tuned(st: Stage, start_from: str) -> Stage:
    """The trained stage a fresh heads stage ``st`` fine-tunes (``train_stage``'s ``start_from``)."""
    if st.kind != "heads":
        raise InvalidRequest(f"start_from is for a heads stage (the first of a workspace); stage {st.name!r} "
                             f"continues {st.parent!r}")
    return Stage.trained_at(start_from)


def _model_dir(ws: Workspace, st: Stage, local_checkpoints) -> Path:
    """Where Model Garden saves ``st``: its folder under the local scratch root that the setting
    ``local_checkpoints`` (:func:`local_checkpoint_setting`) gives, else its workspace folder."""
    local_root = mirror.local_checkpoint_root(ws.root, local_checkpoints)
    return local_root / st.name if local_root else st.folder


def resume_or_load(run: StageRun, init_checkpoint: str | None = None):
    """detectron2's ``resume_or_load``: resume from ``run.latest``, the newest complete checkpoint
    :func:`_resume` found (first copied to ``run.model_dir`` when only the workspace has it), or,
    when there is none, load the stage's starting weights (``init_checkpoint``, else its start's)
    and write its record (:func:`_start_fresh`). Returns the ``(step, prefix)`` Model Garden
    restores, or None."""
    if run.latest and run.where == "drive" and run.model_dir != run.stage.folder:
        run.latest = run.latest[0], mirror.bring_local(run.latest[1], run.model_dir)
    elif not run.latest:
        _start_fresh(run, init_checkpoint)
    return run.latest


def _nothing_to_do(run: StageRun) -> StageResult:
    """The stage is already at its target step: say so and return (its checkpoint published)."""
    start, planned, stage, sdir = run.start, run.planned, run.stage.name, run.stage.folder
    if start >= planned:
        print(f"stage {stage!r} already finished ({start}/{planned} steps, {run.latest[1].name}); "
              "skipping.")
    else:
        print(f"stage {stage!r} is at step {start}, stop_at_step={run.stop_at_step}: nothing to do.")
    ckpt = _publish(run.model_dir, sdir, run.prof.keep_checkpoints) if run.where == "local" else run.latest[1]
    status = "skipped (already finished)" if start >= planned else "stopped: stop_at_step"
    return StageResult(stage, run.prof.name, status, start, start, planned, ckpt, sdir,
                       seconds=time.perf_counter() - run.t_call)


def build_task(cfg, logging_dir):
    """Our registered task (:mod:`helpers.train.tasks.nuclei_maskrcnn`) for ``cfg``, through
    Model Garden's ``task_factory`` as ``train_lib.run_experiment`` builds it."""
    from official.core import task_factory

    import helpers.train.tasks.nuclei_maskrcnn  # noqa: F401 - registers the task for its config

    return task_factory.get_task(cfg.task, logging_dir=str(logging_dir))


def _start_runner(run: StageRun, strategy, bar: StageProgress):
    """The run's runner (:func:`_build_runner`), restored at global step ``run.start``, its mirror
    shown by ``bar``; ``(runner, strategy)``. A stage that never started (no ``run.latest``) whose
    runner cannot be built leaves no record that says "in progress"."""
    try:
        runner, strat = _build_runner(run.cfg, run.prof, strategy, run.model_dir, run.stage.folder, bar)
    except BaseException:
        if not run.latest:
            _forget_unstarted(run.stage.folder)
        raise
    if runner.step != run.start:
        raise RuntimeError(f"restored global step {runner.step}, expected {run.start} from {run.latest}")
    bar.mirror = runner.mirror  # its newest step is shown, its copy time budgeted
    return runner, strat


def _build_runner(cfg, prof, strategy, model_dir: Path, sdir: Path, bar):
    """Our ``OrbitExperimentRunner`` (:class:`helpers.train.runner.StageRunner`: it restores the
    newest checkpoint in ``model_dir``) under a ``tf.distribute`` strategy; ``(runner, strategy)``."""
    from helpers.train import runtime
    from helpers.train.runner import StageRunner

    strat = runtime.set_up(cfg, prof, strategy)
    with strat.scope():
        task = build_task(cfg, model_dir)
    with contextlib.redirect_stdout(io.StringIO()):  # Orbit prints a line per step
        runner = StageRunner(
            distribution_strategy=strat, task=task, params=cfg, model_dir=str(model_dir),
            workspace_dir=sdir, should_stop=bar.over_budget,
            # Not TensorFlow's async checkpointing: with it we measured a resumed run whose
            # optimizer iterations were one ahead of its global step (a checkpoint mixing two
            # steps). This runner's saves read the values, then write them in the background.
            train_actions=[bar], enable_async_checkpointing=False)
    return runner, strat


def _report(run: StageRun, runner, status: str, bar: StageProgress) -> StageResult:
    """What the run did (:func:`_stage_result`), printed with what its mirror copied."""
    result = _stage_result(run, runner, status, bar)
    if runner.mirror is not None:
        print(mirror.describe(runner.mirror))
    print(result)
    return result


def _stage_result(run: StageRun, runner, status: str, bar: StageProgress) -> StageResult:
    sdir = run.stage.folder
    opt = runner.trainer.optimizer
    lr = opt.learning_rate
    final = Path(runner.checkpoint_manager.latest_checkpoint)
    return StageResult(run.stage.name, run.prof.name, status, run.start, int(runner.trainer.global_step.numpy()),
                       run.planned, sdir / final.name, sdir,
                       seconds=time.perf_counter() - run.t_call, s_per_step=bar.s_per_step,
                       optimizer_iterations=int(opt.iterations.numpy()),
                       learning_rate=float(lr(opt.iterations) if callable(lr) else lr))


def _start_fresh(run: StageRun, init_checkpoint: str | None) -> None:
    """A stage's first run: choose its starting weights and write its record ``stage.json``."""
    ws, st, parent, prof, cfg, model_dir = run.ws, run.stage, run.parent, run.prof, run.cfg, run.model_dir
    init = start = None
    sdir = st.folder
    if st.kind == "heads":
        if init_checkpoint:  # a folder (a converted start), or a checkpoint's prefix (a compact Drive copy expanded)
            init = init_checkpoint
            start = str(drive_copy.full_checkpoint(init)) if Path(f"{init}.index").is_file() else init
        elif prof.pretrained and not prof.from_scratch:
            init = start = resolve_pretrained(prof, ws, cfg=cfg)
    else:
        init = _parent_checkpoint(st, parent)  # recorded as it is in the workspace, read whole:
        start = str(drive_copy.full_checkpoint(init))  # a compact Drive copy is expanded first
    cfg.override({"task": {"init_checkpoint": start or ""}}, is_strict=True)
    sdir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(sdir / STAGE_FILE, {
        "stage": st.name, "profile": prof.name, "planned_steps": int(cfg.trainer.train_steps),
        "from_scratch": prof.from_scratch, "scale": prof.scale, "stain_jitter": prof.stain_jitter,
        "pretrained": prof.pretrained, "freeze_backbone_norm": prof.freeze_backbone_norm,
        "crop_sampling": prof.crop_sampling, "mask_upsample": prof.mask_upsample,
        "photometric_jitter": prof.photometric_jitter, "torchvision_ops": prof.torchvision_ops,
        "fingerprint": cfglib.fingerprint(cfg),
        "fingerprint_dict": json.loads(json.dumps(cfglib.fingerprint_dict(cfg), default=str)),
        "init_checkpoint": init, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "train_image_ids": shards.image_ids_of_files(ws.shards, cfg.task.train_data.input_path, missing_ok=True),
        **_pixel_size_record(ws),
        **({"start_from": str(parent.folder)} if st.kind == "heads" and parent is not None else {}),
        "config": json.loads(json.dumps(cfg.as_dict(), default=str)),
    })
    if model_dir != sdir:
        mirror.prepare_local(model_dir, sdir)  # the local folder now belongs to this record


def _pixel_size_record(ws) -> dict:
    """What ``stage.json`` says of the training images' pixel size (µm): the shards', which the
    model learnt nuclei at; notebook 06 rescales images to it."""
    try:
        size = shards.shards_pixel_size(ws.shards)
    except shards.ShardError:  # trained on files outside the workspace's shards (train_files): not known
        return {"pixel_size_um": None, "pixel_size_from": "not recorded (trained on files outside the shards)"}
    return {"pixel_size_um": size.um, "pixel_size_from": size.source}


def _forget_unstarted(sdir: Path) -> None:
    """Remove the record :func:`_start_fresh` just wrote, when no checkpoint followed it."""
    if not ckpts.list_checkpoints(sdir):
        (sdir / STAGE_FILE).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            sdir.rmdir()  # only if empty


def _save_error(e: Exception, model_dir: Path) -> Exception:
    """A checkpoint save that failed on a full or read-only disk, as a
    :class:`~helpers.atomic.FolderNotWritable` naming ``model_dir`` and the size of one
    checkpoint (TensorFlow's own error names a temp file); any other error as it is."""
    from helpers.atomic import folder_error

    saved = ckpts.list_checkpoints(model_dir)
    need = sum(f.stat().st_size for f in mirror.checkpoint_files(saved[-1][1])) if saved else None
    err = folder_error(e, model_dir / "checkpoint", need=need)
    if err is None:
        return e
    return type(err)(err.errno, f"{err.strerror}. The checkpoints saved before it are kept: training "
                                "resumes from the newest one.")


def _train_loop(runner, strat, bar, target: int, fresh: bool, model_dir: Path) -> str:
    """Model Garden's loop up to global step ``target`` (or the time budget); saves on a stop;
    returns the status. The run's last checkpoint is in the workspace when this returns (the
    runner's mirror waits for it)."""
    quiet = contextlib.redirect_stdout(io.StringIO())
    try:
        return _train_until(runner, strat, bar, target, fresh, quiet)
    except KeyboardInterrupt:
        _save_on_interrupt(runner, strat, bar, quiet)
        raise
    except Exception as e:
        explained = _save_error(e, model_dir)
        if explained is not e:
            raise explained from e
        raise
    finally:
        _end_run(runner, bar, failed=sys.exc_info()[0] is not None)


def _train_until(runner, strat, bar, target: int, fresh: bool, quiet) -> str:
    """Train to global step ``target`` or the time budget; the status, its saves written."""
    if fresh:
        # ckpt-0 records the starting weights (pretrained / parent stage) and starts
        # the CheckpointManager's interval count at 0, so saves land on N, 2N, ...
        with strat.scope(), quiet:
            runner.controller.save_checkpoint()
    bar.mark()
    status = "finished"
    with strat.scope(), quiet:
        if runner.train_until(target):
            status = "stopped: time budget"
    runner.finish_writes()
    return status


def _save_on_interrupt(runner, strat, bar, quiet) -> None:
    """A KeyboardInterrupt: save the step reached (if not saved yet) and say so."""
    with strat.scope(), quiet:
        runner.save_if_new()  # the step reached
    runner.finish_writes()
    bar.close()
    print(f"interrupted at step {runner.step}: checkpoint saved"
          + ("; copying it to Drive" if runner.mirror else "") + "; re-run to resume")


def _end_run(runner, bar, failed: bool) -> None:
    """Whatever ended the run: a save still being written ends before we do; the run's last
    checkpoint reaches the workspace (the mirror waits for it)."""
    # a write that failed after an error in flight (``failed``) is left to the re-run (it resumes before it)
    with contextlib.suppress(Exception) if failed else contextlib.nullcontext():
        runner.finish_writes()
    bar.close()
    if runner.mirror is not None:
        runner.mirror.close(raise_error=not failed)
