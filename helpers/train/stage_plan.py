"""What a stage trains with: its profile, the caller's overrides and the knobs it inherits.

A stage continues its parent's model (heads -> all -> specialist), so some knobs are not the
profile's to choose once a stage or its parent has begun:

* :data:`INHERITED_KNOBS` default to the parent stage's, as its record ``stage.json`` holds them
  (``pretrained`` and ``mask_upsample`` fix the architecture; ``from_scratch`` and the input knobs
  continue its recipe); asking for another start or ``from_scratch`` is a ``ConfigError``.
* :data:`KEPT_KNOBS`: a stage already begun keeps what its own record holds, and its planned
  steps, whatever the profile's defaults are now (a newer release's defaults must not break its
  resume). A record older than a knob reads as :data:`LEGACY_KNOBS` (:func:`recorded_knob`).
* A stage uses its parent's profile: another profile builds another network.

:func:`plan` turns that into the ``(Profile, ExperimentConfig)`` of a run, and
:func:`training_files` picks the shards it reads.
"""
from __future__ import annotations

from pathlib import Path

from helpers.train import config as cfglib
from helpers.train.stages import Stage
from helpers.workspace import Workspace
from helpers.errors import InvalidRequest, UserError

# What a begun stage keeps from its own stage.json, whatever the profile's defaults are now
# (a newer release's defaults must not break its resume): the input it sees, its start and
# whether its backbone's batch norm trains. A record older than a knob: LEGACY_KNOBS.
KEPT_KNOBS = ("scale", "stain_jitter", "crop_sampling", "pretrained", "freeze_backbone_norm", "mask_upsample",
              "photometric_jitter", "torchvision_ops")
# a stage continues its parent's model
INHERITED_KNOBS = ("from_scratch", "scale", "stain_jitter", "crop_sampling", "pretrained", "mask_upsample",
                   "photometric_jitter", "torchvision_ops")
# knobs that fix the network itself: a parent's record older than them reads as their legacy value
NETWORK_KNOBS = ("pretrained", "torchvision_ops")
LEGACY_KNOBS = {"scale": 1.0, "stain_jitter": 0.0, "crop_sampling": "uniform", "freeze_backbone_norm": False,
                "mask_upsample": 2, "photometric_jitter": 0.0, "torchvision_ops": False}


class NoTrainingData(UserError, RuntimeError):
    """No shards to train on."""


def training_files(ws: Workspace, stage: Stage, image_ids=None, organs=None,
                   splits=("train",)) -> list[str]:
    """Shard files to train on.

    Specialist stages need ``image_ids`` or ``organs``; heads/all use every
    training shard unless told otherwise.
    """
    from helpers.data import shards

    if stage.kind == "specialist" and not (image_ids or organs):
        raise InvalidRequest(f"stage {stage.name!r}: a specialist trains on a subset; pass organs=[...] "
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


def recorded_knob(info: dict, knob: str):
    """A knob of a stage record, or the value stages had before records held it (the
    colab and cpu profiles started from Model Garden's ImageNet ResNet then)."""
    if knob in info:
        return info[knob]
    if knob == "torchvision_ops" and "torch_padding" in info:  # its first name: the backbone only
        return info["torch_padding"]
    if knob == "pretrained":  # it also fixes the architecture, from scratch too
        return "imagenet" if info.get("profile") in ("colab", "cpu") else None
    return LEGACY_KNOBS[knob]


def inherited_knobs(parent: Stage | None) -> dict:
    """The knobs of :data:`INHERITED_KNOBS` that the parent stage's record holds: a stage
    continues its parent's model (random or pretrained start, mask head, input knobs)."""
    info = parent.record if parent else None
    return {k: recorded_knob(info, k) for k in INHERITED_KNOBS if info and (k in info or k in NETWORK_KNOBS)}


def check_parent_profile(stage: Stage, parent: Stage | None, profile: str) -> None:
    """A stage continues its parent's model, so it must use the parent's profile (another one
    builds another network, whose weights do not fit)."""
    info = parent.record if parent else None
    if info and info.get("profile") not in (None, profile):
        raise cfglib.ConfigError(
            f"stage {stage.name!r} continues stage {parent.name!r}, which was trained with profile "
            f"{info['profile']!r} ({parent.folder}); profile {profile!r} builds another network, so its weights "
            f"cannot be continued. Use profile={info['profile']!r}, or train {parent.name!r} with {profile!r} "
            "in another workspace.")


def plan(ws: Workspace, stage: Stage, parent_stage: Stage | None, profile: str, steps=None, image_ids=None,
         organs=None, train_files=None, splits=("train",), accelerator=None, init_modules=None,
         **profile_overrides):
    """``(profile, config)`` of ``stage`` (its record read) continuing ``parent_stage``: the
    profile with ``profile_overrides`` and the knobs inherited or kept (see the module's doc),
    and the ExperimentConfig on its shards (without init checkpoint)."""
    from helpers.train.configs.nuclei_maskrcnn import experiment_config

    check_parent_profile(stage, parent_stage, profile)
    parent = inherited_knobs(parent_stage)
    # a stage that has begun keeps the input knobs it was started with (a newer release's
    # profile defaults must not break its resume); a stage not yet begun takes its parent's
    own = stage.record
    if own is not None:
        parent.update({k: recorded_knob(own, k) for k in KEPT_KNOBS})
        if steps is None and own.get("planned_steps"):
            steps = int(own["planned_steps"])  # and its plan: the profile's may have changed since
    inherit(stage, profile_overrides, parent)
    prof = cfglib.get_profile(profile, **profile_overrides)
    if train_files:
        files = sorted(str(f) for f in train_files)
    else:
        files = training_files(ws, stage, image_ids=image_ids, organs=organs, splits=splits)
    cfg = experiment_config(prof, stage.name, files, steps=steps, accelerator=accelerator,
                            init_modules=init_modules, kind=stage.kind)
    return prof, cfg


def inherit(stage: Stage, overrides: dict, parent: dict) -> None:
    """Fill ``overrides`` with the knobs ``parent`` (recorded knobs) fixes; a ConfigError when
    the caller asked for another start or another ``from_scratch`` than the model continued."""
    if overrides.get("from_scratch") is None:
        overrides["from_scratch"] = parent.get("from_scratch", False)
    elif "from_scratch" in parent and bool(overrides["from_scratch"]) != parent["from_scratch"]:
        raise cfglib.ConfigError(
            f"stage {stage.name!r}: from_scratch={overrides['from_scratch']} but its parent "
            f"{stage.parent!r} was trained with from_scratch={parent['from_scratch']}; "
            "a stage continues its parent's model, so leave from_scratch unset")
    for k in KEPT_KNOBS:
        if k in parent and overrides.get(k) is None:
            overrides[k] = parent[k]
    if overrides.get("pretrained") is None:
        overrides.pop("pretrained", None)  # the profile's own start
    elif parent.get("pretrained", overrides["pretrained"]) != overrides["pretrained"]:
        raise cfglib.ConfigError(
            f"stage {stage.name!r}: pretrained={overrides['pretrained']!r} but this stage (or the one it "
            f"continues) was started from {parent['pretrained']!r}; leave pretrained unset")
