"""The knobs a stage inherits from its parent and keeps from its own record (no training here;
tests/train/test_training.py trains stages that rely on them)."""
from __future__ import annotations

from pathlib import Path

import pytest

from helpers.train import config as cfglib
from helpers.train import stage_plan
from helpers.train.stages import Stage


def _stage(name: str, record: dict | None = None) -> Stage:
    kind = cfglib.stage_kind(name)
    return Stage(name, kind, cfglib.PARENT_KIND[kind], Path("/nowhere") / name, record)


def test_a_record_older_than_a_knob_reads_as_the_value_stages_had_then():
    assert stage_plan.recorded_knob({"scale": 0.5}, "scale") == 0.5
    assert stage_plan.recorded_knob({}, "mask_upsample") == stage_plan.LEGACY_KNOBS["mask_upsample"]
    assert stage_plan.recorded_knob({"profile": "colab"}, "pretrained") == "imagenet"
    assert stage_plan.recorded_knob({"profile": "demo"}, "pretrained") is None
    assert stage_plan.recorded_knob({"torch_padding": True}, "torchvision_ops") is True  # its first name


def test_a_stage_inherits_what_its_parents_record_holds():
    assert stage_plan.inherited_knobs(None) == {}
    heads = _stage("heads", {"profile": "demo", "from_scratch": True, "scale": 0.5})
    assert stage_plan.inherited_knobs(heads) == {"from_scratch": True, "scale": 0.5, "pretrained": None,
                                                   "torchvision_ops": False}  # an older record: TF padding
    overrides = {"from_scratch": None, "scale": None}
    stage_plan.inherit(_stage("all"), overrides, stage_plan.inherited_knobs(heads))
    # pretrained None: the profile's own
    assert overrides == {"from_scratch": True, "scale": 0.5, "torchvision_ops": False}


def test_another_start_or_profile_than_the_parents_is_refused():
    heads = _stage("heads", {"profile": "demo", "from_scratch": False, "pretrained": "coco"})
    with pytest.raises(cfglib.ConfigError, match="leave from_scratch unset"):
        stage_plan.inherit(_stage("all"), {"from_scratch": True}, stage_plan.inherited_knobs(heads))
    with pytest.raises(cfglib.ConfigError, match="leave pretrained unset"):
        stage_plan.inherit(_stage("all"), {"pretrained": "imagenet"}, stage_plan.inherited_knobs(heads))
    with pytest.raises(cfglib.ConfigError, match="builds another network"):
        stage_plan.check_parent_profile(_stage("all"), heads, "cpu")
    stage_plan.check_parent_profile(_stage("all"), heads, "demo")
