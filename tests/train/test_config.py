"""Profiles -> Model Garden ExperimentConfig (no training here: cheap)."""

import dataclasses

import pytest

from helpers.train import config
from helpers.train.configs import nuclei_maskrcnn as experiment


def cfg(profile, stage="heads", profile_kw=None, **kw):
    prof = config.get_profile(profile, **profile_kw) if profile_kw else profile
    return experiment.experiment_config(prof, stage, ["/d/labeled-x-00000-of-00001.tfrecord"],
                                    accelerator=kw.pop("accelerator", "cpu"), **kw)


def test_each_start_brings_the_architecture_its_weights_fit():
    m = cfg("colab").task.model  # torchvision's maskrcnn_resnet50_fpn_v2
    assert (m.backbone.get().model_id, m.min_level, m.max_level) == (50, 2, 6)
    assert (m.rpn_head.num_convs, m.detection_head.num_convs, m.detection_head.num_fcs) == (2, 4, 1)
    assert (m.detection_head.fc_dims, m.mask_head.num_convs, m.norm_activation.norm_epsilon) == (1024, 4, 1e-5)
    assert cfg("colab").task.identity_norms is True
    # our nuclei choices stay where they shape no weights
    assert (m.anchor.anchor_size, m.anchor.num_scales) == (3.0, 2)
    assert m.detection_generator.max_num_detections == 2000
    r101 = cfg("colab", profile_kw={"pretrained": "imagenet"}).task.model  # matterport's backbone
    assert (r101.backbone.get().model_id, r101.max_level, r101.rpn_head.num_convs) == (101, 5, 1)
    assert r101.norm_activation.norm_epsilon == 1e-4
    tv = cfg("colab", profile_kw={"pretrained": "imagenet-torchvision"}).task.model
    assert (tv.backbone.get().model_id, tv.norm_activation.norm_epsilon) == (101, 1e-5)
    coco_cpu = cfg("cpu", profile_kw={"pretrained": "coco"}).task.model
    assert (coco_cpu.max_level, coco_cpu.detection_head.num_convs) == (6, 4)
    with pytest.raises(config.ConfigError, match="not offered"):
        config.get_profile("demo", pretrained="coco")
    with pytest.raises(config.ConfigError, match="not offered"):
        config.get_profile("colab", pretrained="imagenet21k")


def test_learning_rates_follow_model_gardens_schedule_scaled_to_the_batch():
    colab = config.get_profile("colab")
    # 0.12 for 64 images (maskrcnn_resnetfpn_coco) -> 0.00375 for 2, in both stages
    assert colab.learning_rate == colab.learning_rate_all == pytest.approx(0.12 / 64 * colab.images_per_batch)
    assert cfg("colab").trainer.optimizer_config.learning_rate.cosine.initial_learning_rate == pytest.approx(0.00375)


def test_backbone_batch_norm_is_frozen_when_fine_tuning_only():
    for stage in ("heads", "all"):
        assert cfg("colab", stage).task.model.backbone.get().bn_trainable is False
        assert cfg("cpu", stage).task.model.backbone.get().bn_trainable is False
    # random weights: the statistics must be learnt
    assert cfg("cpu", "all", profile_kw={"from_scratch": True}).task.model.backbone.get().bn_trainable is True
    assert cfg("colab", "all", profile_kw={"from_scratch": True}).task.model.backbone.get().bn_trainable is True
    assert cfg("demo", "all").task.model.backbone.get().bn_trainable is True


def test_three_profiles_keep_matterports_knobs():
    colab, cpu, demo = (config.get_profile(p) for p in ("colab", "cpu", "demo"))
    assert (colab.backbone, colab.images_per_batch, colab.checkpoint_every) == ("resnet50", 2, 25)
    assert cpu.checkpoint_every == demo.checkpoint_every == 5  # a few seconds of each one's step
    assert colab.pretrained == "coco" and cpu.pretrained == "imagenet"
    assert (cpu.backbone, cpu.crop_size, cpu.images_per_batch) == ("resnet50", 512, 1)
    assert demo.resnet_depth <= 18 and demo.crop_size <= 128 and demo.pretrained is None
    c = cfg("colab")
    assert c.task.model.backbone.get().model_id == 50
    assert c.task.train_data.global_batch_size == 2
    assert c.trainer.checkpoint_interval == 25
    assert c.task.init_checkpoint_modules == ["backbone", "decoder", "rpn_head", "detection_head", "mask_head"]
    assert cfg("colab", profile_kw={"pretrained": "imagenet"}).task.init_checkpoint_modules == "backbone"
    assert cfg("cpu").task.init_checkpoint_modules == "backbone"
    with pytest.raises(config.ConfigError, match="unknown profile"):
        config.get_profile("gpu")
    with pytest.raises(config.ConfigError, match="unknown profile knob"):
        config.get_profile("demo", batch=3)


def test_stages_freeze_backbone_only_for_heads():
    assert cfg("demo", "heads").task.freeze_backbone is True
    assert cfg("demo", "all").task.freeze_backbone is False
    spec = cfg("demo", "specialist-colon")
    assert spec.task.freeze_backbone is False and spec.task.init_checkpoint_modules == "all"
    assert config.parent_stage("all") == "heads" and config.parent_stage("specialist-colon") == "all"
    with pytest.raises(config.ConfigError):
        config.stage_kind("everything")


def test_sized_for_nuclei():
    for name in config.PROFILES:
        p = config.get_profile(name)
        c = cfg(name)
        m = c.task.model
        sizes = [m.anchor.anchor_size * 2 ** l * 2 ** (s / m.anchor.num_scales)
                 for l in range(m.min_level, m.max_level + 1) for s in range(m.anchor.num_scales)]
        assert min(sizes) <= 16 and max(sizes) >= 96  # nuclei are 10-96 px
        assert m.detection_generator.max_num_detections <= m.roi_generator.test_num_proposals
        if name != "demo":
            assert m.detection_generator.max_num_detections >= 1900  # ~1,900 nuclei per image
            # a crop at native resolution holds ~crop^2/1e6 of up to 1,900 nuclei
            assert c.task.train_data.parser.max_num_instances >= 1900 * p.crop_size ** 2 / 1e6
        assert p.predict_size % 2 ** m.max_level == 0


def test_crops_are_native_resolution_or_larger_with_flips():
    parser = cfg("cpu").task.train_data.parser
    # the window decoder hands the parser crop-sized windows at native resolution;
    # the parser scales them by aug_scale: >= 1 means never downscaled
    assert parser.aug_scale_min == pytest.approx(1.0)
    assert parser.aug_scale_max > 1.0
    assert parser.aug_rand_hflip and parser.aug_rand_vflip
    colour = cfg("colab").task.train_data.parser.aug_type
    assert colour.type == "randaug" and "Rotate" in colour.randaug.exclude_ops
    assert config.fingerprint_dict(cfg("demo"))["input_pipeline"].startswith("window-decoder")


def test_lr_schedule_spans_the_stages_global_steps():
    c = cfg("demo", steps=40)
    assert c.trainer.train_steps == 40
    assert c.trainer.optimizer_config.learning_rate.cosine.decay_steps == 40
    assert c.trainer.optimizer_config.warmup.linear.warmup_steps <= 40
    # matterport's LR/10 once the backbone trains, from an ImageNet backbone
    assert cfg("cpu", "all").trainer.optimizer_config.learning_rate.cosine.initial_learning_rate < \
        cfg("cpu", "heads").trainer.optimizer_config.learning_rate.cosine.initial_learning_rate


def test_mixed_precision_only_on_gpu():
    assert cfg("colab", accelerator="gpu").runtime.mixed_precision_dtype == "float16"
    assert cfg("colab", accelerator="gpu").task.train_data.dtype == "float16"
    assert cfg("colab", accelerator="cpu").runtime.mixed_precision_dtype == "float32"
    assert cfg("demo", accelerator="gpu").runtime.mixed_precision_dtype == "float32"


def test_fingerprint_tracks_what_matters_only():
    a = cfg("demo")
    assert config.fingerprint(a) == config.fingerprint(cfg("demo"))
    # where the data lives, init weights and save frequency may change between runs
    moved = experiment.experiment_config("demo", "heads", ["/drive/elsewhere/labeled-x-00000-of-00001.tfrecord"],
                                     accelerator="cpu", init_checkpoint="/x/ckpt-3")
    assert config.fingerprint(moved) == config.fingerprint(a)
    often = experiment.experiment_config(config.get_profile("demo", checkpoint_every=2), "heads",
                                     ["/d/labeled-x-00000-of-00001.tfrecord"], accelerator="cpu")
    assert config.fingerprint(often) == config.fingerprint(a)
    # steps, data, learning rate do not
    for other in (cfg("demo", steps=99),
                  experiment.experiment_config("demo", "heads", ["/d/labeled-y-00000-of-00001.tfrecord"],
                                           accelerator="cpu"),
                  experiment.experiment_config(config.get_profile("demo", learning_rate=0.5), "heads",
                                           ["/d/labeled-x-00000-of-00001.tfrecord"], accelerator="cpu")):
        assert config.fingerprint(other) != config.fingerprint(a)
    diff = config.diff_fingerprints(config.fingerprint_dict(a), config.fingerprint_dict(cfg("demo", steps=99)))
    assert "trainer.train_steps: 10 -> 99" in diff


def test_invalid_requests_are_clear_errors():
    with pytest.raises(config.ConfigError, match="never downscaled"):
        experiment.experiment_config(config.get_profile("demo", scale_jitter=(0.5, 1.0)), "heads", [],
                                 accelerator="cpu")
    with pytest.raises(config.ConfigError, match="multiples"):
        experiment.experiment_config(config.get_profile("demo", crop_size=100), "heads", [], accelerator="cpu")
    assert "resnet50" in config.describe("colab") and "checkpoint_every 25" in config.describe("colab")
    assert "start coco (torchvision's COCO Mask R-CNN" in config.describe("colab")
    assert "start random weights" in config.describe("demo")


def test_describe_shows_the_steps_the_run_will_use():
    """The demo runs 150 steps per stage although its profile plans 10: the notebook's knobs win."""
    assert "150 steps for stage heads" in config.describe("demo", "heads", 150)
    assert "10 steps for stage all" in config.describe("demo", "all", 0)
    assert "1000 steps for stage final" not in config.describe("colab", "final", None)  # final is an 'all'
    assert "12000 steps for stage final" in config.describe("colab", "final", None)
    assert "checkpoint_every 7 steps" in config.describe("colab", "heads", 0, 7)
    assert "{" not in config.describe("colab", "heads").split("steps for stage")[0].split("checkpoint_every")[1]


def test_from_scratch_trains_every_layer_with_its_own_learning_rates():
    prof = config.get_profile("cpu", from_scratch=True)
    heads, all_ = cfg(prof, "heads"), cfg(prof, "all")
    assert heads.task.freeze_backbone is False  # a frozen random backbone learns nothing
    lr = lambda c: c.trainer.optimizer_config.learning_rate.cosine.initial_learning_rate  # noqa: E731
    recipe = config.get_profile("cpu").scratch
    assert lr(heads) == recipe["learning_rate"] and lr(all_) == recipe["learning_rate_all"]
    assert lr(heads) > lr(cfg("cpu", "heads")) and lr(all_) > lr(cfg("cpu", "all"))
    assert heads.task.model.backbone.get().model_id == 18 and cfg("cpu").task.model.backbone.get().model_id == 50
    # the caller's knobs win over the recipe
    assert config.get_profile("cpu", from_scratch=True, learning_rate=0.03).learning_rate == 0.03
    assert config.fingerprint(heads) != config.fingerprint(cfg("cpu", "heads"))
    assert "from scratch" in config.describe(prof)


def test_scale_and_stain_jitter_reach_the_task_config():
    c = cfg(config.get_profile("demo", scale=1.5, stain_jitter=0.05))
    assert (c.task.input_scale, c.task.stain_jitter) == (1.5, 0.05)
    assert config.get_profile("demo", scale=2.0).window() == 64
    assert config.fingerprint(c) != config.fingerprint(cfg("demo"))
    # at their defaults our fields stay out of the fingerprint: stages recorded before they
    # existed still resume
    assert "input_scale" not in config.fingerprint_dict(cfg("demo"))["task"]
    assert config.fingerprint_dict(c)["task"]["input_scale"] == 1.5
    with pytest.raises(config.ConfigError, match="scale"):
        config.get_profile("demo", scale=1.3)
    with pytest.raises(config.ConfigError, match="stain_jitter"):
        config.get_profile("demo", stain_jitter=-0.1)


def test_crop_sampling_and_mask_side_reach_the_config_and_the_default_stays_out_of_the_fingerprint():
    c = cfg(config.get_profile("demo", crop_sampling="nuclei", mask_upsample=4, mask_crop_size=56))
    assert c.task.crop_sampling == "nuclei" and c.task.model.mask_head.upsample_factor == 4
    assert c.task.model.mask_roi_aligner.crop_size * 4 == 56 == c.task.train_data.parser.mask_crop_size
    assert config.fingerprint(c) != config.fingerprint(cfg("demo"))
    assert "crop_sampling" not in config.fingerprint_dict(cfg("demo"))["task"]  # older stages resume
    assert "crops centred on nuclei, 56px masks" in config.describe(config.get_profile(
        "demo", crop_sampling="nuclei", mask_upsample=4, mask_crop_size=56))
    with pytest.raises(config.ConfigError, match="crop_sampling"):
        config.get_profile("demo", crop_sampling="dense")
    with pytest.raises(config.ConfigError, match="mask_crop_size"):
        config.get_profile("demo", mask_upsample=4)  # its 28 px GT crop is smaller than the output
    with pytest.raises(config.ConfigError, match="torchvision's mask head"):
        config.get_profile("colab", mask_upsample=4)
    assert config.get_profile("cpu", from_scratch=True, mask_upsample=4).mask_upsample == 4


def test_cross_field_rules_are_checked():
    with pytest.raises(config.ConfigError, match="test_num_proposals"):
        config.get_profile("demo", test_num_proposals=200, max_num_detections=200)


def test_final_stage_is_an_all_stage():
    assert config.stage_kind("final") == "all" and config.parent_stage("final") == "heads"


def test_nuclei_maskrcnn_is_registered_with_its_task_and_its_rules_are_model_garden_restrictions():
    from official.core import exp_factory, task_factory

    from helpers.train.tasks.nuclei_maskrcnn import NucleiMaskRCNNTask

    registered = exp_factory.get_exp_config(experiment.EXPERIMENT)
    colab = config.get_profile("colab")
    assert isinstance(registered.task, experiment.NucleiTask)
    # the colab profile's heads stage on its GPU
    assert registered.task.model.input_size == [colab.crop_size, colab.crop_size, 3]
    assert registered.task.freeze_backbone and registered.trainer.train_steps == colab.steps["heads"]
    assert registered.runtime.mixed_precision_dtype == "float16"
    # Model Garden's task_factory builds our task from its config, as train_lib does
    assert type(task_factory.get_task(registered.task)) is NucleiMaskRCNNTask
    # an edit of the Model Garden config itself (not through a profile) meets the same rules
    c = cfg("demo")
    c.override({"task": {"model": {"detection_generator": {"max_num_detections": 400}}}}, is_strict=True)
    with pytest.raises(KeyError, match="test_num_proposals"):
        c.validate()
    for rule in config.CROSS_FIELD_RULES:
        assert rule.holds(config.get_profile("colab"))
        assert f"{rule.field_left} {rule.op} {rule.field_right}" in c._restrictions  # noqa: SLF001


def test_profiles_are_small_differences_from_the_registered_one():
    colab = config.get_profile("colab")
    changed = {name: [f.name for f in dataclasses.fields(config.Profile)
                      if getattr(config.get_profile(name), f.name) != getattr(colab, f.name)]
               for name in ("cpu", "demo")}
    assert "crop_size" not in changed["cpu"] and "stain_jitter" not in changed["cpu"]  # what cpu shares
    # cpu keeps Model Garden's ImageNet start, its P2-P5 architecture and its padding (colab's are COCO's),
    # and saves every 5 steps (a CPU step takes seconds, a T4's a quarter of one)
    assert len(changed["cpu"]) <= 22, changed["cpu"]


@pytest.mark.parametrize("knobs, message", [
    ({"checkpoint_every": 0}, "checkpoint_every 0: a whole number of 1 or more"),
    ({"checkpoint_every": 2.5}, "checkpoint_every 2.5"),
    ({"images_per_batch": 0}, "images_per_batch 0"),
])
def test_counts_below_one_are_refused_before_training(tmp_path, knobs, message):
    """checkpoint_every 0 once trained every step, saved nothing and then failed: the training lost."""
    import re

    from helpers.train import training

    with pytest.raises(config.ConfigError, match=re.escape(message)):
        training.train_stage("heads", "demo", tmp_path / "ws", progress=False, **knobs)
    assert not (tmp_path / "ws" / "checkpoints" / "heads").exists()
    with pytest.raises(config.ConfigError, match=re.escape("steps {'heads': 0}: whole numbers of 1 or more")):
        config.check_profile(config.get_profile("demo", steps={"heads": 0, "all": 10, "specialist": 5}))
