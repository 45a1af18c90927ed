"""One training-config vocabulary: three profiles -> Model Garden ExperimentConfig.

The notebooks never edit an ExperimentConfig by hand. They pick a *profile*
(``colab``, ``cpu`` or ``demo``) and a *stage* (``heads``, ``all`` or
``specialist-<name>``); :func:`experiment_config` derives the Model Garden
config from Model Garden's own ``maskrcnn_resnetfpn_coco`` experiment.

matterport knob -> here -> Model Garden field
  BACKBONE            backbone="resnet101"      task.model.backbone.resnet.model_id
  IMAGES_PER_GPU*GPUs images_per_batch          task.train_data.global_batch_size
  LEARNING_RATE       learning_rate(_all)       trainer.optimizer_config.learning_rate
  (checkpoint/epoch)  checkpoint_every=5        trainer.checkpoint_interval
  epochs per stage    steps["heads"/"all"/...]  trainer.train_steps (global steps)
  layers='heads'/'all' stage "heads"/"all"      task.freeze_backbone
  RPN_ANCHOR_SCALES   anchor_size, num_scales   task.model.anchor.*
  MAX_GT_INSTANCES    max_num_instances         task.train_data.parser.max_num_instances
  DETECTION_MAX_INSTANCES max_num_detections    task.model.detection_generator.max_num_detections
  RPN_TRAIN_ANCHORS_PER_IMAGE rpn_batch_size_per_im  task.train_data.parser.rpn_batch_size_per_im
  TRAIN_ROIS_PER_IMAGE num_sampled_rois         task.model.roi_sampler.num_sampled_rois

Facts the numbers come from: nuclei measure 10-96 px (median 30) and a
1000x1000 H&E image holds up to ~1,900 of them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Sequence

PROFILES = ("colab", "cpu", "demo")
BASE_EXPERIMENT = "maskrcnn_resnetfpn_coco"  # Model Garden's registered experiment
EXPERIMENT = "nuclei_maskrcnn"              # ours: BASE_EXPERIMENT + the task fields below
SCALES = (1.0, 1.5, 2.0)                    # input magnifications the `scale` knob offers
SPECIALIST_PREFIX = "specialist-"
# The version of helpers.train.train_input's input pipeline, part of the config fingerprint: bump it
# when the pipeline changes what training sees (so a stage is not resumed on other inputs).
PIPELINE_VERSION = "window-decoder-v1"
FINAL_STAGE = "final"  # an `all` stage on every labelled image (train + val), for the submission

# Model Garden's published ImageNet ResNet checkpoints (MODEL_GARDEN.md, "ImageNet
# Baselines"). A tar.gz holding a TF checkpoint whose top-level item is `backbone`,
# which is exactly what init_checkpoint_modules="backbone" reads.
IMAGENET_RESNET_URLS = {
    50: "https://storage.googleapis.com/tf_model_garden/vision/resnet/resnet-50-i224.tar.gz",
    101: "https://storage.googleapis.com/tf_model_garden/vision/resnet/resnet-101-i224.tar.gz",
}

# RandAugment ops that move pixels (boxes/masks would not follow) or erase/invert
# nuclei: Model Garden's Mask R-CNN parser applies RandAugment to the image only,
# so only in-place colour ops are allowed (its own docstring says so).
GEOMETRIC_OR_DESTRUCTIVE_OPS = [
    "Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY", "Cutout",
    "Invert", "Solarize", "SolarizeAdd",
]


class ConfigError(ValueError):
    """A profile/stage request that cannot be turned into a config."""


@dataclass(frozen=True)
class Profile:
    """matterport-style knobs; each default is explained where the profile is defined."""

    name: str
    backbone: str                       # "resnet18" / "resnet50" / "resnet101"
    images_per_batch: int               # global batch (matterport IMAGES_PER_GPU x GPU_COUNT)
    learning_rate: float                # heads stage peak LR (SGD, momentum 0.9)
    learning_rate_all: float            # `all` and specialist stages peak LR
    steps: dict                         # planned global steps per stage kind
    crop_size: int                      # square training crop, at native resolution
    predict_size: int                   # model input for prediction (full image, padded)
    checkpoint_every: int = 5           # a Colab disconnect loses at most this many steps
    keep_checkpoints: int = 3           # last few kept; older ones deleted by CheckpointManager
    warmup_steps: int = 50
    weight_decay: float = 4e-5          # Model Garden's COCO value
    gradient_clip_norm: float = 10.0    # Mask R-CNN from few images can spike early
    scale_jitter: tuple = (1.0, 1.25)   # x native resolution: only upscale, never shrink nuclei
    color_jitter: bool = True           # RandAugment colour ops (stain variation across organs)
    min_level: int = 2                  # stride-4 P2 features: a 10 px nucleus is 2.5 cells
    max_level: int = 5                  # P5 (stride 32) already sees 96 px nuclei; no P6 needed
    anchor_size: float = 3.0            # base anchor = 3 x stride: 12, 24, 48, 96 px on P2-P5
    num_scales: int = 2                 # + x1.41 per level: 12..136 px covers 10-96 px nuclei
    aspect_ratios: tuple = (0.5, 1.0, 2.0)  # nuclei are round to elongated
    max_num_instances: int = 1000       # GT kept per crop; padded to this size
    max_num_detections: int = 2000      # > ~1,900 nuclei on a full 1000x1000 image
    rpn_batch_size_per_im: int = 512    # many small positives per image: sample more anchors
    rpn_fg_fraction: float = 0.5
    num_proposals: int = 2000           # train ROIs kept after NMS (~2x nuclei in a crop)
    test_pre_nms_top_k: int = 6000
    test_num_proposals: int = 3000      # must exceed max_num_detections
    num_sampled_rois: int = 512         # ROI head samples per image
    roi_fg_fraction: float = 0.5        # dense objects: half positives (COCO uses 0.25)
    num_sampled_masks: int = 256        # mask-head samples per image (COCO 128)
    mask_crop_size: int = 56            # GT mask crop; model target is 28x28, 112 wastes memory
    fpn_filters: int = 256
    rpn_filters: int = 256
    head_convs: int = 4
    head_filters: int = 256
    head_fc_dims: int = 1024
    mask_convs: int = 4
    mask_filters: int = 256
    pretrained: str | None = None       # "imagenet" -> IMAGENET_RESNET_URLS[depth]
    mixed_precision: bool = False       # float16 on GPU only (ignored elsewhere)
    # Input magnification, the same for training crops and prediction: a crop_size crop
    # shows crop_size/scale native px, and images are enlarged by it before prediction.
    # Nuclei are 10-96 px (median 30); matterport's nucleus sample upscales 2x.
    scale: float = 1.0
    # H&E stain jitter (Tellez et al. 2019): each optical-density channel of the
    # haematoxylin-eosin-DAB decomposition becomes a*s + b, a ~ U(1-x, 1+x), b ~ U(-x, x),
    # on the image only. 0 = off; 0.05 is Tellez's "HED-light".
    stain_jitter: float = 0.0
    # Training from random weights (no pretrained backbone; train_stage(from_scratch=True)):
    # nothing is frozen (a frozen random backbone learns nothing), and the knobs in `scratch`
    # replace the profile's: learning rates a random network needs rather than matterport's
    # fine-tuning ones, and a model small enough to take many steps in the time there is.
    from_scratch: bool = False
    scratch: dict = dataclasses.field(default_factory=dict)

    @property
    def resnet_depth(self) -> int:
        if not self.backbone.startswith("resnet"):
            raise ConfigError(f"backbone {self.backbone!r}: only 'resnet<depth>' is supported")
        return int(self.backbone[len("resnet"):])

    def stage_learning_rate(self, kind: str) -> float:
        """Peak learning rate of a stage kind ('heads', 'all', 'specialist')."""
        return self.learning_rate if kind == "heads" else self.learning_rate_all

    def freezes_backbone(self, kind: str) -> bool:
        """matterport's layers='heads': only with a pretrained backbone worth keeping."""
        return kind == "heads" and not self.from_scratch

    def window(self) -> int:
        """Side in native px of the image window a training crop shows (crop_size / scale)."""
        return int(round(self.crop_size / self.scale))


_PROFILES = {
    # Colab GPU (T4/L4, 15-24 GB): matterport's nucleus setup on Model Garden.
    "colab": Profile(
        name="colab",
        backbone="resnet101",           # matterport nucleus sample's backbone
        images_per_batch=2,             # 2 x 512^2 crops per step (matterport: IMAGES_PER_GPU 2)
        learning_rate=0.01,             # SGD peak for batch 2 (Model Garden: 0.12 for batch 64)
        learning_rate_all=0.001,        # matterport: LR/10 once the backbone is unfrozen
        steps={"heads": 2000, "all": 6000, "specialist": 1000},  # ~20 images: many passes
        # native-resolution crops (multiple of 2^max_level). 512, not 640: on the densest real
        # images (1,862 nuclei) the input pipeline needed 11-13 GB host RAM at 640 (too much
        # for a 12.7 GB Colab) and 5.8 GB at 512, as matterport's nucleus sample crops.
        crop_size=512,
        max_num_instances=800,          # a 512^2 crop holds ~26% of <=1,900 nuclei, +60% margin
        predict_size=1024,              # 1000x1000 test images padded to a multiple of 32
        warmup_steps=200,
        pretrained="imagenet",          # ImageNet ResNet-101 backbone (init_checkpoint_modules)
        mixed_precision=True,
        stain_jitter=0.1,               # H&E jitter: +3% AP@100, +7% AP@1000 (bench_quality)
        # random weights: every layer trains at once, so one LR (x10 matterport's `all`)
        scratch={"learning_rate": 0.02, "learning_rate_all": 0.01},
    ),
    # No GPU (quota gone): the best that runs at a few s/step on 2 cores.
    "cpu": Profile(
        name="cpu",
        backbone="resnet50",            # half the FLOPs of ResNet-101
        images_per_batch=1,             # memory and s/step on CPU
        learning_rate=0.005,            # batch 1: half of colab's per-image LR x batch
        learning_rate_all=0.0005,
        steps={"heads": 500, "all": 1500, "specialist": 300},
        crop_size=512,                  # native resolution, ~1/4 of an image per step
        predict_size=1024,
        warmup_steps=50,
        pretrained="imagenet",
        max_num_instances=600,          # a 512^2 crop holds ~26% of <=1,900 nuclei, x2 margin
        num_proposals=1000,             # ~2x the nuclei in a 512 crop, cheaper on CPU
        stain_jitter=0.1,               # H&E jitter: +3% AP@100, +7% AP@1000 (bench_quality)
        # The ROI heads cost most of a CPU step (measured: 21.8 -> 8.0 s/step on 2 cores):
        # matterport's 2-fc box head (no convs), COCO's sample counts, a narrower mask head.
        head_convs=0,
        num_sampled_rois=256,
        num_sampled_masks=128,
        mask_filters=128,
        # From scratch nothing is gained from ResNet-50's depth in a CPU-hour, while a
        # ResNet-18 FPN of 128 channels takes ~1.6x the steps (4.9 vs 8.0 s/step) and a
        # random network needs large learning rates with a short warm-up.
        scratch={"backbone": "resnet18", "fpn_filters": 128, "rpn_filters": 128, "head_filters": 128,
                 "learning_rate": 0.02, "learning_rate_all": 0.01, "warmup_steps": 50},
    ),
    # Tests and the README's demo run: a few steps on 2 CPU cores in a couple of minutes.
    "demo": Profile(
        name="demo",
        backbone="resnet18",            # smallest standard ResNet in Model Garden
        images_per_batch=1,
        learning_rate=0.01,
        learning_rate_all=0.002,
        steps={"heads": 10, "all": 10, "specialist": 5},
        crop_size=128,                  # tiny crops of the tiny synthetic images
        predict_size=256,
        warmup_steps=2,
        scale_jitter=(1.0, 1.25),
        color_jitter=False,             # keep the demo run cheap and deterministic-ish
        max_num_instances=100,          # synthetic images hold a few dozen nuclei
        max_num_detections=200,
        rpn_batch_size_per_im=128,
        num_proposals=256,
        test_pre_nms_top_k=1000,
        test_num_proposals=300,
        num_sampled_rois=64,
        num_sampled_masks=32,
        mask_crop_size=28,
        fpn_filters=32,
        rpn_filters=32,
        head_convs=0,
        head_filters=32,
        head_fc_dims=64,
        mask_convs=1,
        mask_filters=32,
        pretrained=None,                # no downloads in tests
    ),
}


def get_profile(name: str, **overrides) -> Profile:
    """The named profile, optionally with knobs replaced (e.g. ``checkpoint_every=10``)."""
    if name not in _PROFILES:
        raise ConfigError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    prof = _PROFILES[name]
    unknown = set(overrides) - {f.name for f in dataclasses.fields(Profile)}
    if unknown:
        raise ConfigError(f"unknown profile knob(s) {sorted(unknown)}")
    if overrides.get("from_scratch"):  # the profile's from-scratch recipe, then the caller's knobs
        prof = dataclasses.replace(prof, from_scratch=True, **prof.scratch)
    if overrides:
        prof = dataclasses.replace(prof, **overrides)
    check_profile(prof)
    return prof


def check_profile(prof: Profile) -> None:
    """ConfigError for knob values that cannot work together."""
    if prof.scale not in SCALES:
        raise ConfigError(f"scale {prof.scale!r}: use one of {SCALES}")
    if not 0.0 <= prof.stain_jitter <= 0.5:
        raise ConfigError(f"stain_jitter {prof.stain_jitter!r}: use 0 (off) to 0.5 (0.05 is typical)")
    bad = set(prof.scratch) - ({f.name for f in dataclasses.fields(Profile)} - {"name", "from_scratch", "scratch"})
    if bad:
        raise ConfigError(f"profile {prof.name}: unknown knob(s) {sorted(bad)} in scratch")
    if prof.test_num_proposals <= prof.max_num_detections:
        raise ConfigError(f"test_num_proposals ({prof.test_num_proposals}) must exceed "
                          f"max_num_detections ({prof.max_num_detections})")
    stride = 2 ** prof.max_level
    if prof.crop_size % stride or prof.predict_size % stride:
        raise ConfigError(f"crop_size/predict_size must be multiples of {stride} (2^max_level)")
    if prof.scale_jitter[0] < 1.0:
        raise ConfigError("scale_jitter must not go below 1.0: nuclei are never downscaled")


def stage_kind(stage: str) -> str:
    """'heads', 'all' (also for 'final') or 'specialist' (for 'specialist-<name>')."""
    if stage in ("heads", "all"):
        return stage
    if stage == FINAL_STAGE:
        return "all"
    if stage.startswith(SPECIALIST_PREFIX) and len(stage) > len(SPECIALIST_PREFIX):
        name = stage[len(SPECIALIST_PREFIX):]
        if not all(c.isalnum() or c in "-_" for c in name):
            raise ConfigError(f"stage {stage!r}: use letters, digits, '-' or '_' after 'specialist-'")
        return "specialist"
    raise ConfigError(f"unknown stage {stage!r}; use 'heads', 'all', '{FINAL_STAGE}' or "
                      "'specialist-<name>'")


def parent_stage(stage: str) -> str | None:
    """The stage whose final weights a stage starts from."""
    return {"heads": None, "all": "heads", "specialist": "all"}[stage_kind(stage)]


def detect_accelerator() -> str:
    """'tpu', 'gpu' or 'cpu' for the current runtime (does not touch the network)."""
    import os

    import tensorflow as tf

    if os.environ.get("COLAB_TPU_ADDR") or os.environ.get("TPU_NAME"):
        return "tpu"
    return "gpu" if tf.config.list_physical_devices("GPU") else "cpu"


_REGISTERED = []


def register_experiment() -> None:
    """Register :data:`EXPERIMENT` with Model Garden's ``exp_factory`` (once per process).

    It is Model Garden's ``maskrcnn_resnetfpn_coco`` with the task config :class:`NucleiTask`
    (the same fields plus ours), so a stored config rebuilds with every field it had.
    """
    if _REGISTERED:
        return
    from official.core import config_definitions as cfg
    from official.core import exp_factory
    from official.vision.configs import maskrcnn as mg_maskrcnn

    @dataclasses.dataclass
    class NucleiTask(mg_maskrcnn.MaskRCNNTask):
        input_scale: float = 1.0   # Profile.scale: training windows and prediction input
        stain_jitter: float = 0.0  # Profile.stain_jitter: H&E optical-density jitter (training)

    def nuclei_maskrcnn() -> cfg.ExperimentConfig:
        base = exp_factory.get_exp_config(BASE_EXPERIMENT)
        task = NucleiTask()
        task.override(base.task.as_dict(), is_strict=True)
        return cfg.ExperimentConfig(runtime=base.runtime, task=task, trainer=base.trainer,
                                    restrictions=list(base._restrictions))  # noqa: SLF001

    if EXPERIMENT not in exp_factory._REGISTERED_CONFIGS:  # noqa: SLF001 - re-import safe
        exp_factory.register_config_factory(EXPERIMENT)(nuclei_maskrcnn)
    _REGISTERED.append(EXPERIMENT)


def experiment_config(
    profile: str | Profile,
    stage: str = "heads",
    train_files: Sequence[str] = (),
    steps: int | None = None,
    init_checkpoint: str | None = None,
    accelerator: str | None = None,
    init_modules: str | Sequence[str] | None = None,
):
    """The Model Garden ``ExperimentConfig`` for one profile and stage.

    Args:
      profile: profile name or a :class:`Profile`.
      stage: ``heads``, ``all`` or ``specialist-<name>``.
      train_files: TFRecord shard paths (one image each) to train on.
      steps: planned global steps of the stage (the LR schedule spans them);
        defaults to the profile's ``steps[<stage kind>]``.
      init_checkpoint: checkpoint to start from when the stage has none yet
        (pretrained backbone for ``heads``; the parent stage's final
        checkpoint for ``all``/specialist).
      accelerator: 'gpu'/'tpu'/'cpu'; detected when None. Decides mixed precision.
      init_modules: what to load from ``init_checkpoint`` on a fresh stage; default
        "backbone" for heads (ImageNet ResNet), "all" otherwise. ["backbone", "decoder"]
        fits a Model Garden COCO Mask R-CNN checkpoint (its heads have 91 classes).
    """
    from official.core import exp_factory

    register_experiment()
    prof = get_profile(profile) if isinstance(profile, str) else profile
    check_profile(prof)
    kind = stage_kind(stage)
    total = int(steps if steps is not None else prof.steps[kind])
    if total < 1:
        raise ConfigError(f"steps must be >= 1, got {total}")
    precision = data_dtype = _precision(accelerator or detect_accelerator(), prof)
    modules = init_modules or ("backbone" if kind == "heads" else "all")
    if not isinstance(modules, str):
        modules = list(modules)

    cfg = exp_factory.get_exp_config(EXPERIMENT)
    cfg.override({
        "runtime": {
            "mixed_precision_dtype": precision,
            "enable_xla": False,  # XLA recompiles for every new image shape at prediction
        },
        "task": {
            "init_checkpoint": init_checkpoint or "",
            # heads: only the (pretrained) backbone; all/specialist: the whole parent model.
            "init_checkpoint_modules": modules,
            # matterport layers='heads': backbone frozen (also keeps its BN statistics),
            # unless it is random (from scratch).
            "freeze_backbone": prof.freezes_backbone(kind),
            "input_scale": prof.scale,
            "stain_jitter": prof.stain_jitter,
            "annotation_file": "",
            "use_coco_metrics": False,  # we evaluate with pycocotools ourselves
            "losses": {"l2_weight_decay": prof.weight_decay},
            "model": _model_override(prof),
            "train_data": _train_data_override(prof, train_files, data_dtype),
            "validation_data": {"input_path": "", "global_batch_size": 1, "dtype": data_dtype},
        },
        "trainer": _trainer_override(prof, kind, total),
    }, is_strict=True)
    if prof.color_jitter:
        cfg.override({"task": {"train_data": {"parser": {"aug_type": {
            "type": "randaug",
            "randaug": {"num_layers": 2, "magnitude": 5,
                        "exclude_ops": GEOMETRIC_OR_DESTRUCTIVE_OPS},
        }}}}}, is_strict=False)
    cfg.validate()
    return cfg


def _precision(accelerator: str, prof: Profile) -> str:
    """Mixed precision and input dtype: bfloat16 on TPU, float16 on GPU when the profile
    allows it, else float32."""
    if accelerator == "tpu":
        return "bfloat16"
    if accelerator == "gpu" and prof.mixed_precision:
        return "float16"
    return "float32"


def _model_override(prof: Profile) -> dict:
    """``task.model``: the architecture knobs of the profile (matterport's names in the README)."""
    return {
        "num_classes": 2,  # background + nucleus
        "input_size": [prof.crop_size, prof.crop_size, 3],
        "min_level": prof.min_level,
        "max_level": prof.max_level,
        "anchor": {
            "anchor_size": prof.anchor_size,
            "num_scales": prof.num_scales,
            "aspect_ratios": list(prof.aspect_ratios),
        },
        "backbone": {"type": "resnet", "resnet": {"model_id": prof.resnet_depth}},
        "decoder": {"type": "fpn", "fpn": {"num_filters": prof.fpn_filters}},
        "rpn_head": {"num_filters": prof.rpn_filters},
        "detection_head": {
            "num_convs": prof.head_convs,
            "num_filters": prof.head_filters,
            "fc_dims": prof.head_fc_dims,
        },
        "mask_head": {"num_convs": prof.mask_convs, "num_filters": prof.mask_filters},
        "roi_generator": {
            "pre_nms_top_k": max(2 * prof.num_proposals, 2000),
            "num_proposals": prof.num_proposals,
            "test_pre_nms_top_k": prof.test_pre_nms_top_k,
            "test_num_proposals": prof.test_num_proposals,
        },
        "roi_sampler": {
            "num_sampled_rois": prof.num_sampled_rois,
            "foreground_fraction": prof.roi_fg_fraction,
        },
        "mask_sampler": {"num_sampled_masks": prof.num_sampled_masks},
        "detection_generator": {
            "max_num_detections": prof.max_num_detections,
            "pre_nms_top_k": max(prof.test_num_proposals, 1000),
            "pre_nms_score_threshold": 0.05,
        },
        # Sync BN only helps with many replicas of a large batch.
        "norm_activation": {"use_sync_bn": False},
    }


def _train_data_override(prof: Profile, train_files: Sequence[str], data_dtype: str) -> dict:
    """``task.train_data``: the shards, the batch and the parser's augmentation."""
    # Training examples reach Model Garden's parser as windows of crop/scale native px
    # (helpers.train.train_input.WindowDecoder, task.input_scale). The parser scales its input
    # by aug_scale * crop / window side, so the magnification is scale * aug_scale.
    # (Images smaller than the window, e.g. demo ones, are enlarged to the crop.)
    lo, hi = prof.scale_jitter
    return {
        "input_path": list(train_files),
        "global_batch_size": prof.images_per_batch,
        "dtype": data_dtype,
        "shuffle_buffer_size": 64,  # one image per shard file: ~20-100 items
        "parser": {
            "aug_rand_hflip": True,
            "aug_rand_vflip": True,  # h+v flips also give 180-degree rotations
            "aug_scale_min": lo,
            "aug_scale_max": hi,
            "max_num_instances": prof.max_num_instances,
            "rpn_batch_size_per_im": prof.rpn_batch_size_per_im,
            "rpn_fg_fraction": prof.rpn_fg_fraction,
            "mask_crop_size": prof.mask_crop_size,
        },
    }


def _trainer_override(prof: Profile, kind: str, total: int) -> dict:
    """``trainer``: the stage's steps, checkpointing and its SGD + cosine schedule."""
    lr = prof.stage_learning_rate(kind)
    warmup = min(prof.warmup_steps, max(total // 5, 0))
    return {
        "train_steps": total,
        "steps_per_loop": 1,          # progress line and time-budget check every step
        "summary_interval": 1,        # TensorBoard point every step
        "checkpoint_interval": prof.checkpoint_every,
        "max_to_keep": prof.keep_checkpoints,
        "validation_interval": total,
        "validation_steps": 1,
        "recovery_max_trials": -1,    # no silent rollback on loss spikes
        "optimizer_config": {
            "optimizer": {"type": "sgd", "sgd": {
                "momentum": 0.9, "global_clipnorm": prof.gradient_clip_norm}},
            # Schedule over the stage's global steps: resuming continues it.
            "learning_rate": {"type": "cosine", "cosine": {
                "initial_learning_rate": lr, "decay_steps": total, "alpha": 0.01}},
            "warmup": {"type": "linear", "linear": {
                "warmup_steps": warmup, "warmup_learning_rate": lr * 0.1}},
        },
    }


# Fields that may change between runs of the same stage without mixing anything:
# where the data lives, where weights started from, how often to save/log.
_TASK_FIELD_DEFAULTS = {"input_scale": 1.0, "stain_jitter": 0.0}  # NucleiTask's own fields
_NOT_FINGERPRINTED = {
    ("task", "init_checkpoint"),
    ("task", "train_data", "input_path"),
    ("trainer", "checkpoint_interval"),
    ("trainer", "max_to_keep"),
    ("trainer", "steps_per_loop"),
    ("trainer", "summary_interval"),
}


def fingerprint_dict(cfg) -> dict:
    """The part of a config that must not change while a stage is half-trained."""
    d = cfg.as_dict()

    def strip(node, path=()):
        if isinstance(node, dict):
            return {k: strip(v, path + (k,)) for k, v in sorted(node.items())
                    if path + (k,) not in _NOT_FINGERPRINTED}
        return node

    d = without_default_fields(strip(d))
    d["input_pipeline"] = PIPELINE_VERSION
    # The training data by file name (not by absolute path, which differs on Drive).
    paths = cfg.task.train_data.input_path
    paths = [paths] if isinstance(paths, str) else list(paths or [])
    d["train_files"] = sorted(p.replace("\\", "/").rsplit("/", 1)[-1] for p in paths)
    return d


def without_default_fields(d: dict) -> dict:
    """A fingerprint dict without our task fields at their defaults, so stages recorded
    before those fields existed (or while they were fingerprinted) compare equal."""
    task = {k: v for k, v in d.get("task", {}).items()
            if not (k in _TASK_FIELD_DEFAULTS and v == _TASK_FIELD_DEFAULTS[k])}
    return {**d, "task": task} if "task" in d else d


def same_config(stored: dict, cfg) -> list[str]:
    """Differences between a stage record's ``fingerprint_dict`` and ``cfg`` (empty: same)."""
    now = json.loads(json.dumps(fingerprint_dict(cfg), default=str))
    return diff_fingerprints(without_default_fields(stored), now)


def fingerprint(cfg) -> str:
    """A short hash of :func:`fingerprint_dict`."""
    blob = json.dumps(fingerprint_dict(cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def diff_fingerprints(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Human-readable differences between two fingerprint dicts."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += diff_fingerprints(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def describe(profile: str | Profile) -> str:
    """A few lines for the notebook: the matterport-style knobs of a profile."""
    p = get_profile(profile) if isinstance(profile, str) else profile
    return (f"profile {p.name}: backbone {p.backbone}-FPN, images_per_batch {p.images_per_batch}, "
            f"learning_rate {p.learning_rate} (heads) / {p.learning_rate_all} (all), "
            f"checkpoint_every {p.checkpoint_every} steps, steps {p.steps}, "
            f"crop {p.crop_size}px " + (f"of {p.window()} native px (scale {p.scale})"
                                        if p.scale != 1.0 else "at native resolution")
            + (f", stain jitter {p.stain_jitter}" if p.stain_jitter else "")
            + (", from scratch" if p.from_scratch else "") + ", anchors "
            f"{[round(p.anchor_size * 2 ** l * 2 ** (s / p.num_scales)) for l in range(p.min_level, p.max_level + 1) for s in range(p.num_scales)]} px")
