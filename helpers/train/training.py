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
"""
from __future__ import annotations

import contextlib
import functools
import io
import json
import math
import os
import socket
import sys
import tarfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from helpers.atomic import atomic_path, atomic_write_json
from helpers.train import checkpoints as ckpts
from helpers.train import config as cfglib
from helpers.train import drive_copy, mirror
from helpers.train.torch_convert import PretrainedWeightsUnavailable
from helpers.train.curves import LOSS_KEYS
from helpers.train.stages import STAGE_FILE, StageLock, read_record, read_stage_info, stage_dir
from helpers.train.stages import StageBusy, StageRecordError, events_dir, stage_status  # noqa: F401 - notebooks 02/03 and callers use them here
from helpers.workspace import Workspace, as_workspace


class StageConfigMismatch(RuntimeError):
    """The stage folder holds checkpoints made with a different config."""


class ParentStageNotFinished(RuntimeError):
    """`all`/specialist needs the final checkpoint of the stage before it."""


class NoTrainingData(RuntimeError):
    """No shards to train on."""


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


# ----------------------------------------------------------------------------- paths & data

def training_files(ws: Workspace, stage: str, image_ids=None, organs=None,
                   splits=("train",)) -> list[str]:
    """Shard files to train on.

    Specialist stages need ``image_ids`` or ``organs``; heads/all use every
    training shard unless told otherwise.
    """
    from helpers.data import shards

    if cfglib.stage_kind(stage) == "specialist" and not (image_ids or organs):
        raise ValueError(f"stage {stage!r}: a specialist trains on a subset; pass organs=[...] "
                         "or image_ids=[...]")
    index_path = Path(ws.shards) / shards.INDEX_NAME
    if not index_path.is_file():
        raise NoTrainingData(f"{index_path} not found: write the shards first (notebook 01, "
                             "helpers.data.shards.write_shards)")
    files = [str(p) for p in shards.select_shards(ws.shards, image_ids=image_ids, organs=organs,
                                                  splits=tuple(splits))]
    if not files:
        raise NoTrainingData(f"no shards in {ws.shards} match splits={list(splits)} "
                             f"organs={organs} image_ids={image_ids}")
    return sorted(files)


# ----------------------------------------------------------------------------- pretrained

def resolve_pretrained(profile: cfglib.Profile, ws: Workspace, timeout_s: float = 20.0, cfg=None) -> str:
    """Local checkpoint prefix of the profile's start (downloaded, and converted, once).

    Cached in ``<workspace>/pretrained/``: Model Garden's ImageNet ResNet (``imagenet``), or
    torchvision's weights converted for ``cfg``'s model (``coco``, ``imagenet-torchvision``:
    :func:`helpers.train.torch_convert.resolve_start`). Raises
    :class:`PretrainedWeightsUnavailable` quickly (never hangs) when the weights cannot be
    reached.
    """
    import tensorflow as tf

    if profile.pretrained is None:
        raise ValueError(f"profile {profile.name} has no pretrained weights")
    if profile.pretrained in cfglib.TORCHVISION_STARTS:
        from helpers.train import torch_convert

        return torch_convert.resolve_start(ws.root, profile.pretrained, cfg.task.model,
                                           cfg.task.init_checkpoint_modules)
    url = (cfglib.IMAGENET_RESNET_URLS.get(profile.resnet_depth)
           if profile.pretrained == "imagenet" else profile.pretrained)
    if url is None:
        raise PretrainedWeightsUnavailable(
            f"no ImageNet checkpoint is published for {profile.backbone}; pass "
            "from_scratch=True or init_checkpoint='<path to a checkpoint with a `backbone`>'")
    if "://" not in url or url.startswith("file://"):
        local = url.replace("file://", "")
        return tf.train.latest_checkpoint(local) if Path(local).is_dir() else local
    name = Path(urllib.parse.urlparse(url).path).name.replace(".tar.gz", "")
    cache = ws.root / "pretrained" / name
    found = _find_prefix(cache)
    if found:
        return found
    offer = ("Re-run with from_scratch=True to train from random weights (much weaker "
             "results), or download it yourself and pass init_checkpoint='<checkpoint prefix>'.")
    host = urllib.parse.urlparse(url).hostname
    try:
        socket.create_connection((host, 443), timeout=min(timeout_s, 5.0)).close()
        tmp_tar = cache.parent / f".{name}.tar.gz"
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(tmp_tar) as tmp, urllib.request.urlopen(url, timeout=timeout_s) as resp:
            from helpers.progress import tqdm

            total = int(resp.headers.get("Content-Length") or 0) or None
            with open(tmp, "wb") as f, tqdm(total=total, unit="B", unit_scale=True,
                                            desc=f"downloading {name}") as bar:
                while chunk := resp.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
        extract = cache.parent / f".{name}.extracting"
        with tarfile.open(tmp_tar) as tar:
            tar.extractall(extract, filter="data")
        os.replace(extract, cache)
        tmp_tar.unlink()
    except (OSError, tarfile.TarError) as e:
        raise PretrainedWeightsUnavailable(
            f"pretrained weights for {profile.backbone} could not be reached at {url} "
            f"({type(e).__name__}: {e}). {offer}") from e
    found = _find_prefix(cache)
    if not found:
        raise PretrainedWeightsUnavailable(f"{url} held no TensorFlow checkpoint. {offer}")
    return found


def _find_prefix(folder: Path) -> str | None:
    if not folder.is_dir():
        return None
    idx = sorted(folder.rglob("*.index"))
    return str(idx[-1].with_suffix("")) if idx else None


# ----------------------------------------------------------------------------- strategy

def pick_strategy(strategy=None):
    """TPUStrategy on a TPU, MirroredStrategy on several GPUs, else the default strategy.

    ``strategy`` may be a ``tf.distribute.Strategy`` (used as is) or one of
    ``"tpu"``, ``"mirrored"`` (all GPUs, or all logical CPUs when there is
    no GPU), ``"default"``.
    """
    import tensorflow as tf
    from official.common import distribute_utils

    from helpers.train.experiment import detect_accelerator

    if isinstance(strategy, tf.distribute.Strategy):
        return strategy
    gpus = tf.config.list_logical_devices("GPU")
    if strategy is None:
        acc = detect_accelerator()
        strategy = "tpu" if acc == "tpu" else ("mirrored" if len(gpus) > 1 else "default")
    if strategy == "tpu":
        addr = os.environ.get("COLAB_TPU_ADDR")
        return distribute_utils.get_distribution_strategy(
            "tpu", tpu_address=f"grpc://{addr}" if addr else os.environ.get("TPU_NAME", "local"))
    if strategy == "mirrored":
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices=devices)
    if strategy == "default":
        return tf.distribute.get_strategy()
    raise ValueError(f"unknown strategy {strategy!r}; use 'tpu', 'mirrored' or 'default'")


# ----------------------------------------------------------------------------- runner

class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: training stops at once instead of going on for hours."""


class _StopForBudget(Exception):
    """Raised by the progress action when the next step would overrun the time budget."""


class _Progress:
    """Orbit train action: a tqdm line with step/total, losses and s/step; time budget.

    Orbit has no "stop now" hook; an action runs after every loop of
    ``steps_per_loop`` (=1) steps, so raising from it ends ``Controller.train``
    cleanly between two steps, and the runner then saves a checkpoint.
    """

    def __init__(self, stage, start, total, enabled=True, t0=None, budget_s=None, mirror=None, lock=None):
        from helpers.progress import tqdm

        self.bar = tqdm(total=total, initial=start, desc=f"train {stage}", unit="step",
                        disable=not enabled, dynamic_ncols=True, file=sys.stderr)
        self.stage = stage
        self.times: list[float] = []
        self.last = time.perf_counter()
        self.last_output: dict = {}
        self.t0 = t0 if t0 is not None else time.perf_counter()
        self.budget_s = budget_s
        self.mirror = mirror  # a CheckpointMirror: its newest step is shown, its copy time budgeted
        self.lock = lock  # the StageLock this run holds: refreshed as it trains

    def __call__(self, output):
        if self.lock is not None:
            self.lock.refresh()
        now = time.perf_counter()
        self.times.append(now - self.last)
        self.last = now
        vals = {k: float(output[k]) for k in LOSS_KEYS if k in output}
        if "learning_rate" in output:
            vals["learning_rate"] = float(output["learning_rate"])
        self.last_output = vals
        self._check_finite(vals)
        sps = self.s_per_step or self.times[-1]
        post = {"loss": f"{vals.get('total_loss', float('nan')):.3f}",
                "mask": f"{vals.get('mask_loss', float('nan')):.3f}",
                "lr": f"{vals.get('learning_rate', 0):.2e}",
                "s/step": f"{sps:.2f}",
                "left": _duration(sps * (self.bar.total - self.bar.n - 1))}
        if self.mirror is not None:
            post["safe on Drive"] = self.mirror.mirrored_step if self.mirror.mirrored_step is not None else "-"
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(1)
        if self.budget_s is not None:
            est = self.s_per_step or 0.0  # the first step's time is mostly tracing: no estimate yet
            copy = self.mirror.last_copy_seconds if self.mirror is not None else 0.0
            if now - self.t0 + 1.5 * est + copy > self.budget_s:  # the last copy runs after the stop
                raise _StopForBudget()

    def _check_finite(self, vals: dict) -> None:
        bad = {k: v for k, v in vals.items() if k != "learning_rate" and not math.isfinite(v)}
        if bad:
            step = self.bar.n + 1
            self.bar.close()
            raise TrainingDiverged(
                f"stage {self.stage!r}: {', '.join(f'{k} = {v}' for k, v in bad.items())} at step {step} "
                f"(learning rate {vals.get('learning_rate', float('nan')):.2e}): training diverged and was "
                f"stopped, with no checkpoint of this step. A checkpoint saved just before it may hold "
                f"the diverged weights too. Start the stage again with a lower learning_rate (move its "
                f"checkpoints folder away first: a new rate is a new config).")

    def mark(self):
        self.last = time.perf_counter()

    @property
    def s_per_step(self):
        t = self.times[1:]  # the first step includes tracing the tf.function
        return sum(t) / len(t) if t else None

    def close(self):
        self.bar.close()


def _resume(sdir: Path, model_dir: Path, cfg, stage: str):
    """Where a run of ``stage`` starts: the stage record and the newest complete checkpoint.

    The whole resume policy (detectron2's ``resume_or_load``, for a runtime that may vanish):

    * ``sdir`` (the workspace, Drive on Colab) holds the stage's record ``stage.json`` and
      its complete checkpoints; Model Garden saves into ``model_dir``.
    * ``model_dir == sdir``: resume from the newest complete checkpoint there.
    * ``model_dir`` on the runtime's local disk: from the newer complete checkpoint of local
      disk and workspace (:func:`helpers.train.mirror.resume_point`); a local folder left by another
      run of the stage is set aside first.
    * Torn checkpoints are set aside with a warning and the one before is used.
    * Checkpoints made under another config are refused (:class:`StageConfigMismatch`).

    Returns ``(info, latest, where)``: ``latest`` is ``(step, prefix)`` or None, ``where`` is
    ``"local"``, ``"drive"`` or ``"none"``.
    """
    info = read_record(sdir / STAGE_FILE)
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
                f"stage {stage!r} in {sdir} was trained up to step {latest[0]} with profile "
                f"{info.get('profile')!r} and a different config; resuming would mix two runs. "
                f"Differences (stored -> now):\n  {shown}\nUse the original profile/steps/data, "
                f"or train under another stage name, or move {sdir} away to start over.")
    elif latest and not info:
        raise StageConfigMismatch(
            f"{sdir} holds checkpoints but no {STAGE_FILE}: it was not made by train_stage. "
            "Move it away or use another stage name.")
    return info, latest, where


def _publish(model_dir: Path, sdir: Path, keep: int) -> Path | None:
    """Make sure the newest checkpoint of ``model_dir`` is in the workspace; return its prefix there."""
    if model_dir != sdir:
        mirror.CheckpointMirror(model_dir, sdir, keep=keep).close()
    latest = ckpts.list_checkpoints(sdir)
    return latest[-1][1] if latest else None


def _parent_checkpoint(ws: Workspace, stage: str) -> str:
    parent = cfglib.parent_stage(stage)
    pdir = stage_dir(ws, parent)
    info = read_stage_info(ws, parent)
    latest = ckpts.latest_complete(pdir) if pdir.is_dir() else None
    if not info or not latest or latest[0] < int(info["planned_steps"]):
        got = f"step {latest[0]}/{info['planned_steps']}" if (info and latest) else "no checkpoint"
        raise ParentStageNotFinished(
            f"stage {stage!r} starts from the final weights of {parent!r}, which is not finished "
            f"({got} in {pdir}). Run train_stage({parent!r}, ...) to the end first.")
    return str(latest[1])


def build_task(cfg, logging_dir):
    """Model Garden's MaskRCNNTask for ``cfg``, with the dense-nuclei window decoder."""
    from helpers.train.train_input import NucleiMaskRCNNTask

    return NucleiMaskRCNNTask(cfg.task, logging_dir=str(logging_dir))


# What a begun stage keeps from its own stage.json, whatever the profile's defaults are now
# (a newer release's defaults must not break its resume): the input it sees, its start and
# whether its backbone's batch norm trains. A record older than a knob: LEGACY_KNOBS.
KEPT_KNOBS = ("scale", "stain_jitter", "crop_sampling", "pretrained", "freeze_backbone_norm", "mask_upsample")
# a stage continues its parent's model
INHERITED_KNOBS = ("from_scratch", "scale", "stain_jitter", "crop_sampling", "pretrained", "mask_upsample")
LEGACY_KNOBS = {"scale": 1.0, "stain_jitter": 0.0, "crop_sampling": "uniform", "freeze_backbone_norm": False,
                "mask_upsample": 2}


def recorded_knob(info: dict, knob: str):
    """A knob of a stage record, or the value stages had before records held it (the
    colab and cpu profiles started from Model Garden's ImageNet ResNet then)."""
    if knob in info:
        return info[knob]
    if knob == "pretrained":  # it also fixes the architecture, from scratch too
        return "imagenet" if info.get("profile") in ("colab", "cpu") else None
    return LEGACY_KNOBS[knob]


def inherited_knobs(workspace, stage: str) -> dict:
    """The knobs of :data:`INHERITED_KNOBS` that the parent stage's record holds: a stage
    continues its parent's model (random or pretrained start, mask head, input knobs)."""
    parent = cfglib.parent_stage(stage)
    info = read_stage_info(workspace, parent) if parent else None
    return {k: recorded_knob(info, k) for k in INHERITED_KNOBS if info and (k in info or k == "pretrained")}


def _check_parent_profile(ws: Workspace, stage: str, profile: str) -> None:
    """A stage continues its parent's model, so it must use the parent's profile (another one
    builds another network, whose weights do not fit)."""
    parent = cfglib.parent_stage(stage)
    info = read_stage_info(ws, parent) if parent else None
    if info and info.get("profile") not in (None, profile):
        raise cfglib.ConfigError(
            f"stage {stage!r} continues stage {parent!r}, which was trained with profile {info['profile']!r} "
            f"({stage_dir(ws, parent)}); profile {profile!r} builds another network, so its weights cannot "
            f"be continued. Use profile={info['profile']!r}, or train {parent!r} with {profile!r} in "
            "another workspace.")


def plan_stage(stage: str, profile: str = "demo", workspace=None, steps: int | None = None,
               image_ids=None, organs=None, train_files: Sequence[str] | None = None,
               splits: Sequence[str] = ("train",), accelerator: str | None = None,
               init_modules=None, **profile_overrides):
    """The profile, ExperimentConfig (without init checkpoint) and stage folder of a stage.

    :data:`INHERITED_KNOBS` (``from_scratch``, the input knobs, and ``pretrained`` and
    ``mask_upsample``, which fix the architecture) default to the parent stage's (recorded in its ``stage.json``);
    ``from_scratch`` defaults to False for heads. A stage already begun keeps the
    :data:`KEPT_KNOBS` its own ``stage.json`` records (:func:`recorded_knob`), and its planned
    steps unless ``steps`` is given.
    """
    from helpers.train.experiment import experiment_config

    ws = as_workspace(workspace)
    _check_parent_profile(ws, stage, profile)
    parent = inherited_knobs(ws, stage)
    # a stage that has begun keeps the input knobs it was started with (a newer release's
    # profile defaults must not break its resume); a stage not yet begun takes its parent's
    own = read_stage_info(ws, stage)
    if own is not None:
        parent.update({k: recorded_knob(own, k) for k in KEPT_KNOBS})
        if steps is None and own.get("planned_steps"):
            steps = int(own["planned_steps"])  # and its plan: the profile's may have changed since
    if profile_overrides.get("from_scratch") is None:
        profile_overrides["from_scratch"] = parent.get("from_scratch", False)
    elif "from_scratch" in parent and bool(profile_overrides["from_scratch"]) != parent["from_scratch"]:
        raise cfglib.ConfigError(
            f"stage {stage!r}: from_scratch={profile_overrides['from_scratch']} but its parent "
            f"{cfglib.parent_stage(stage)!r} was trained with from_scratch={parent['from_scratch']}; "
            "a stage continues its parent's model, so leave from_scratch unset")
    for k in KEPT_KNOBS:
        if k in parent and profile_overrides.get(k) is None:
            profile_overrides[k] = parent[k]
    if profile_overrides.get("pretrained") is None:
        profile_overrides.pop("pretrained", None)  # the profile's own start
    elif parent.get("pretrained", profile_overrides["pretrained"]) != profile_overrides["pretrained"]:
        raise cfglib.ConfigError(
            f"stage {stage!r}: pretrained={profile_overrides['pretrained']!r} but this stage (or the one it "
            f"continues) was started from {parent['pretrained']!r}; leave pretrained unset")
    prof = cfglib.get_profile(profile, **profile_overrides)
    if train_files:
        files = sorted(str(f) for f in train_files)
    else:
        files = training_files(ws, stage, image_ids=image_ids, organs=organs, splits=splits)
    cfg = experiment_config(prof, stage, files, steps=steps, accelerator=accelerator, init_modules=init_modules)
    return prof, cfg, stage_dir(ws, stage)


def train_stage(stage: str, profile: str = "demo", workspace=None, steps: int | None = None,
                time_budget_s: float | None = None, stop_at_step: int | None = None,
                image_ids: Sequence[str] | None = None, organs: Sequence[str] | None = None,
                train_files: Sequence[str] | None = None, splits: Sequence[str] | None = None,
                from_scratch: bool | None = None, pretrained: str | None = None,
                init_checkpoint: str | None = None, init_modules=None, strategy=None,
                progress: bool = True, local_checkpoints=None, **profile_overrides) -> StageResult:
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
      strategy: None (automatic), "tpu", "mirrored", "default" or a Strategy.
      local_checkpoints: where Model Garden saves: a folder on the runtime's own disk whose
        newest checkpoint is copied to the workspace in the background, or False to save
        straight into the workspace. Default (None): ``$NUCLEI_LOCAL_CHECKPOINTS``, else local
        disk when the workspace is on Colab's Drive mount (see :mod:`helpers.train.mirror`).
      **profile_overrides: profile knobs, e.g. ``checkpoint_every=10``.
    """
    t_call = time.perf_counter()
    ws = as_workspace(workspace)
    if splits is None:
        splits = ("train", "val") if stage == cfglib.FINAL_STAGE else ("train",)
    prof, cfg, sdir = plan_stage(stage, profile, ws, steps=steps, image_ids=image_ids,
                                 organs=organs, train_files=train_files, splits=splits,
                                 init_modules=init_modules, from_scratch=from_scratch,
                                 pretrained=pretrained, **profile_overrides)
    with StageLock(ws, stage) as lock:
        planned = int(cfg.trainer.train_steps)
        local_root = mirror.local_checkpoint_root(ws.root, local_checkpoints)
        model_dir = local_root / stage if local_root else sdir  # where Model Garden saves
        info, latest, where = _resume(sdir, model_dir, cfg, stage)
        start = latest[0] if latest else 0
        target = min(planned, stop_at_step) if stop_at_step else planned
        if latest and start >= target:
            return _nothing_to_do(stage, prof, latest, where, planned, stop_at_step, model_dir, sdir, t_call)
        latest = resume_or_load(ws, stage, prof, cfg, sdir, model_dir, latest, where, init_checkpoint)

        drive = (mirror.CheckpointMirror(model_dir, sdir, keep=prof.keep_checkpoints,
                                         base=bool(cfg.task.freeze_backbone))
                 if model_dir != sdir else None)
        bar = _Progress(stage, start, planned, enabled=progress, t0=t_call, budget_s=time_budget_s,
                        mirror=drive, lock=lock)
        try:
            runner, strat = _build_runner(cfg, prof, strategy, model_dir, bar)
        except BaseException:
            if not latest:  # a stage that never started leaves no record that says "in progress"
                _forget_unstarted(sdir)
            raise
        gstep = int(runner.trainer.global_step.numpy())
        if gstep != start:
            raise RuntimeError(f"restored global step {gstep}, expected {start} from {latest}")
        _announce(stage, latest, where, start, planned, model_dir, sdir, drive)
        status = _train_loop(runner, strat, bar, drive, target, fresh=not latest, model_dir=model_dir,
                             over_budget=(time_budget_s is not None
                                          and time.perf_counter() - t_call > time_budget_s))
        if status == "finished" and target < planned:
            status = "stopped: stop_at_step"
        result = _stage_result(runner, stage, prof, status, start, planned, sdir, bar, t_call)
        if drive is not None:
            print(mirror.describe(drive))
        print(result)
        return result


def resume_or_load(ws, stage, prof, cfg, sdir: Path, model_dir: Path, latest, where: str,
                   init_checkpoint: str | None):
    """detectron2's ``resume_or_load``: resume from ``latest``, the newest complete checkpoint
    :func:`_resume` found (first copied to ``model_dir`` when only the workspace has it), or,
    when there is none, load the stage's starting weights and write its record
    (:func:`_start_fresh`). Returns the ``(step, prefix)`` Model Garden restores, or None."""
    if latest and where == "drive" and model_dir != sdir:
        return latest[0], mirror.bring_local(latest[1], model_dir)
    if not latest:
        _start_fresh(ws, stage, prof, cfg, sdir, model_dir, init_checkpoint)
    return latest


def _duration(seconds: float) -> str:
    """``1h05m``, ``12m`` or ``40s``."""
    seconds = max(0, int(round(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m" if seconds >= 60 else f"{seconds}s"


def _announce(stage, latest, where, start, planned, model_dir, sdir, drive) -> None:
    """Say how many steps are planned and left, where the run starts and where it saves;
    start the copy to the workspace."""
    if latest:
        source = f" (copied from {sdir})" if where == "drive" and model_dir != sdir else ""
        print(f"resuming stage {stage!r} from {latest[1].name}{source}: step {start} of {planned} planned, "
              f"{planned - start} left (the progress line shows the time left)")
    else:
        print(f"stage {stage!r}: {planned} steps planned (the progress line shows the time left)")
    if drive is not None:
        print(f"checkpoints: saved on this runtime's disk ({model_dir}), copied to {sdir} in the background "
              "with only what a resume needs (float16 weights, no momentum: a quarter of the bytes); "
              "'safe on Drive' in the progress line is the newest step whose copy there is complete")
        drive.start()


def _nothing_to_do(stage, prof, latest, where, planned, stop_at_step, model_dir, sdir, t_call) -> StageResult:
    """The stage is already at its target step: say so and return (its checkpoint published)."""
    start = latest[0]
    if start >= planned:
        print(f"stage {stage!r} already finished ({start}/{planned} steps, {latest[1].name}); "
              "skipping.")
    else:
        print(f"stage {stage!r} is at step {start}, stop_at_step={stop_at_step}: nothing to do.")
    ckpt = _publish(model_dir, sdir, prof.keep_checkpoints) if where == "local" else latest[1]
    status = "skipped (already finished)" if start >= planned else "stopped: stop_at_step"
    return StageResult(stage, prof.name, status, start, start, planned, ckpt, sdir,
                       seconds=time.perf_counter() - t_call)


def _build_runner(cfg, prof, strategy, model_dir: Path, bar):
    """Model Garden's ``OrbitExperimentRunner`` for ``cfg`` (it restores the newest checkpoint
    in ``model_dir``) under a ``tf.distribute`` strategy; ``(runner, strategy)``."""
    import tensorflow as tf
    from official.modeling import performance

    from helpers.train.experiment import detect_accelerator

    if prof.seed is not None:  # the model's initial weights and the input order
        tf.keras.utils.set_random_seed(prof.seed)
    if prof.name == "colab" and detect_accelerator() == "cpu":
        print(f"note: profile 'colab' on a machine without GPU is very slow ({prof.backbone}, "
              f"batch {prof.images_per_batch}); profile 'cpu' is made for this case (a different stage config).")
    performance.set_mixed_precision_policy(tf.dtypes.as_dtype(cfg.runtime.mixed_precision_dtype))
    tf.get_logger().setLevel("ERROR")  # Model Garden's deprecation/INFO lines drown the progress line
    strat = pick_strategy(strategy)
    with strat.scope():
        task = build_task(cfg, model_dir)
    with contextlib.redirect_stdout(io.StringIO()):  # Orbit prints a line per step
        runner = _runner_class()(
            distribution_strategy=strat, task=task, mode="train", params=cfg,
            model_dir=str(model_dir),
            # Not TensorFlow's async checkpointing: with it we measured a resumed run whose
            # optimizer iterations were one ahead of its global step (a checkpoint mixing two
            # steps). This runner's saves read the values, then write them in the background.
            train_actions=[bar], enable_async_checkpointing=False)
    return runner, strat


@functools.cache
def _runner_class():
    """Model Garden (TensorFlow) is imported on first use, not with this module."""
    from official.core import train_lib

    class Runner(train_lib.OrbitExperimentRunner):
        """Model Garden's runner whose CheckpointManager saves in the background
        (:class:`helpers.train.background_save.BackgroundCheckpoint`): a save holds training up
        only while it reads the values. Model Garden documents this override."""

        def _maybe_build_checkpoint_manager(self):
            import tensorflow as tf

            from helpers.train.background_save import BackgroundCheckpoint

            if not self.trainer.checkpoint:
                return None
            return tf.train.CheckpointManager(
                BackgroundCheckpoint.like(self.trainer.checkpoint), directory=self.model_dir,
                max_to_keep=self.params.trainer.max_to_keep, step_counter=self.trainer.global_step,
                checkpoint_interval=self.params.trainer.checkpoint_interval, init_fn=self.trainer.initialize)

    return Runner


def _stage_result(runner, stage, prof, status, start, planned, sdir: Path, bar, t_call) -> StageResult:
    opt = runner.trainer.optimizer
    lr = opt.learning_rate
    final = Path(runner.checkpoint_manager.latest_checkpoint)
    return StageResult(stage, prof.name, status, start, int(runner.trainer.global_step.numpy()),
                       planned, sdir / final.name, sdir,
                       seconds=time.perf_counter() - t_call, s_per_step=bar.s_per_step,
                       optimizer_iterations=int(opt.iterations.numpy()),
                       learning_rate=float(lr(opt.iterations) if callable(lr) else lr))


def _start_fresh(ws, stage, prof, cfg, sdir, model_dir, init_checkpoint) -> None:
    """A stage's first run: choose its starting weights and write its record ``stage.json``."""
    init = start = None
    if cfglib.stage_kind(stage) == "heads":
        if init_checkpoint:
            init = start = init_checkpoint
        elif prof.pretrained and not prof.from_scratch:
            init = start = resolve_pretrained(prof, ws, cfg=cfg)
    else:
        init = _parent_checkpoint(ws, stage)  # recorded as it is in the workspace, read whole:
        start = str(drive_copy.full_checkpoint(init))  # a compact Drive copy is expanded first
    cfg.override({"task": {"init_checkpoint": start or ""}}, is_strict=True)
    sdir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(sdir / STAGE_FILE, {
        "stage": stage, "profile": prof.name, "planned_steps": int(cfg.trainer.train_steps),
        "from_scratch": prof.from_scratch, "scale": prof.scale, "stain_jitter": prof.stain_jitter,
        "pretrained": prof.pretrained, "freeze_backbone_norm": prof.freeze_backbone_norm,
        "crop_sampling": prof.crop_sampling, "mask_upsample": prof.mask_upsample,
        "fingerprint": cfglib.fingerprint(cfg),
        "fingerprint_dict": json.loads(json.dumps(cfglib.fingerprint_dict(cfg), default=str)),
        "init_checkpoint": init, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "train_image_ids": _image_ids_of(ws, cfg.task.train_data.input_path),
        "config": json.loads(json.dumps(cfg.as_dict(), default=str)),
    })
    if model_dir != sdir:
        mirror.prepare_local(model_dir, sdir)  # the local folder now belongs to this record


def _image_ids_of(ws: Workspace, files) -> list[str]:
    """What the stage trains on, for notebook 04's check that it never scores a model on its own
    training images; empty for explicit train_files outside the workspace's index."""
    from helpers.data.shards import image_ids_of_files

    try:
        return image_ids_of_files(ws.shards, files)
    except Exception:  # noqa: BLE001 - no index in this workspace
        return []


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


def _finish_writes(runner) -> None:
    """Wait until the checkpoint being written in the background is on disk (its error, if
    the write failed, is raised here)."""
    if runner.checkpoint_manager is not None:
        runner.checkpoint_manager.sync()


def _train_loop(runner, strat, bar, drive, target: int, fresh: bool, over_budget: bool,
                model_dir: Path) -> str:
    """Model Garden's loop up to global step ``target``; saves on a stop; returns the status.

    The run's last checkpoint is in the workspace when this returns (``drive`` waits for it).
    """
    controller = runner.controller
    quiet = contextlib.redirect_stdout(io.StringIO())
    status = "finished"
    try:
        if fresh:
            # ckpt-0 records the starting weights (pretrained / parent stage) and starts
            # the CheckpointManager's interval count at 0, so saves land on N, 2N, ...
            with strat.scope(), quiet:
                controller.save_checkpoint()
        if over_budget:
            _finish_writes(runner)
            return "stopped: time budget"  # the model build alone used the budget
        bar.mark()
        with strat.scope(), quiet:
            # Model Garden's loop: steps, CheckpointManager saves every N, summaries.
            controller.train(steps=target, checkpoint_at_completion=True)
        _finish_writes(runner)
    except (_StopForBudget, KeyboardInterrupt) as stop:
        status = "stopped: time budget" if isinstance(stop, _StopForBudget) else "interrupted"
        with strat.scope(), quiet:
            controller.save_checkpoint()  # the step reached; a no-op if already saved
        _finish_writes(runner)
        if isinstance(stop, KeyboardInterrupt):
            bar.close()
            print(f"interrupted at step {int(runner.trainer.global_step.numpy())}: checkpoint saved"
                  + ("; copying it to Drive" if drive else "") + "; re-run to resume")
            raise
    except Exception as e:
        explained = _save_error(e, model_dir)
        if explained is not e:
            raise explained from e
        raise
    finally:
        # a save still being written (a return above, or an error in flight) ends before we do;
        # a write that failed after an error in flight is left to the re-run (it resumes before it)
        with contextlib.suppress(Exception) if sys.exc_info()[0] else contextlib.nullcontext():
            _finish_writes(runner)
        bar.close()
        if drive is not None:
            drive.close(raise_error=sys.exc_info()[0] is None)
    return status
