"""One training-config vocabulary: three profiles -> Model Garden ExperimentConfig.

The notebooks never edit an ExperimentConfig by hand. They pick a *profile*
(``colab``, ``cpu`` or ``demo``) and a *stage* (``heads``, ``all`` or
``specialist-<name>``); ``helpers.train.configs.nuclei_maskrcnn.experiment_config`` builds the
Model Garden config from typed sub-configs, as Model Garden's own
``maskrcnn_resnetfpn_coco()`` does. The ``colab`` profile is our registered experiment
(``nuclei_maskrcnn``); ``cpu`` and ``demo`` are written as their differences from it.
This module holds the knobs and imports no TensorFlow.

matterport knob -> here -> Model Garden field
  BACKBONE            backbone="resnet101"      task.model.backbone.get().model_id
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
import operator
from dataclasses import dataclass

from helpers.errors import UserError

PROFILES = ("colab", "cpu", "demo")
SCALES = (1.0, 1.5, 2.0)                    # input magnifications the `scale` knob offers
SPECIALIST_PREFIX = "specialist-"
# The version of helpers.train.train_input's input pipeline, part of the config fingerprint: bump it
# when the pipeline changes what training sees (so a stage is not resumed on other inputs).
PIPELINE_VERSION = "window-decoder-v1"
FINAL_STAGE = "final"  # an `all` stage on every labelled image (train + val), for the submission

# Model Garden's published ImageNet ResNet checkpoints (MODEL_GARDEN.md, "ImageNet
# Baselines"). A tar.gz holding a TF checkpoint whose top-level item is `backbone`,
# which is exactly what init_checkpoint_modules="backbone" reads. (ResNet-101's row says
# ReLU, but the config it links trains with swish: activations hold no variables, so such a
# checkpoint would load silently into our ReLU network. "imagenet-torchvision" is ReLU.)
IMAGENET_RESNET_URLS = {
    50: "https://storage.googleapis.com/tf_model_garden/vision/resnet/resnet-50-i224.tar.gz",
    101: "https://storage.googleapis.com/tf_model_garden/vision/resnet/resnet-101-i224.tar.gz",
}

# The pretrained starts (Profile.pretrained). Each fixes what is loaded and, for weights
# converted from torchvision (helpers.train.torch_convert), the knobs of the architecture
# those weights fit; every other knob (anchors, limits, samplers) stays the profile's.
HEAD_MODULES = ("rpn_head", "detection_head", "mask_head")  # their class-agnostic layers only
# torchvision's maskrcnn_resnet50_fpn_v2 (COCO mask AP 41.8): ResNet-50, an FPN with batch
# norm on levels 2-6, a 2-conv RPN head, 4 conv + BN and one 1024 fc in the box head, 4 conv +
# BN in the mask head, batch norm epsilon 1e-5; it has no norm after the RPN convs, the box fc
# and the mask deconv, so Model Garden's norms there are held as identities (identity_norms).
COCO_ARCHITECTURE = {
    "backbone": "resnet50", "min_level": 2, "max_level": 6, "fpn_filters": 256,
    "rpn_convs": 2, "rpn_filters": 256, "head_convs": 4, "head_filters": 256, "head_fcs": 1,
    "head_fc_dims": 1024, "mask_convs": 4, "mask_filters": 256, "mask_upsample": 2, "norm_epsilon": 1e-5,
    "identity_norms": True, "torchvision_ops": True,
}
CROP_SAMPLINGS = ("uniform", "nuclei")  # Profile.crop_sampling
MASK_ROI_SIZE = 14  # Model Garden's MaskROIAligner crop (and torchvision's): the mask head's input side
STARTS = {
    # Model Garden's ImageNet ResNet (a TF checkpoint): the backbone only
    "imagenet": ("backbone",),
    # torchvision's ImageNet ResNet-50/-101 (IMAGENET1K_V2, ReLU), converted: the backbone only
    "imagenet-torchvision": ("backbone",),
    # torchvision's COCO Mask R-CNN, converted: backbone, FPN and the heads' shared layers
    "coco": ("backbone", "decoder") + HEAD_MODULES,
}
TORCHVISION_STARTS = ("imagenet-torchvision", "coco")
START_LABELS = {
    "imagenet": "Model Garden's ImageNet ResNet",
    "imagenet-torchvision": "torchvision's ImageNet ResNet, converted",
    "coco": "torchvision's COCO Mask R-CNN, converted",
}
# Model Garden's Mask R-CNN schedule is 0.12 for a batch of 64 images (maskrcnn.py,
# maskrcnn_resnetfpn_coco): the linear scaling rule (Goyal et al. 2017) gives this per image.
LR_PER_IMAGE = 0.12 / 64


@dataclass(frozen=True)
class Rule:
    """A rule across two knobs, and the Model Garden fields they set (its restriction)."""

    left: str
    op: str                             # one of Model Garden's: > >= < <= == !=
    right: str
    field_left: str
    field_right: str
    why: str

    def holds(self, prof: Profile) -> bool:
        return _OPS[self.op](getattr(prof, self.left), getattr(prof, self.right))


_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le, "==": operator.eq, "!=": operator.ne}


_ROI = "task.model.roi_generator."
CROSS_FIELD_RULES = (
    Rule("test_num_proposals", ">", "max_num_detections", _ROI + "test_num_proposals",
         "task.model.detection_generator.max_num_detections",
         "the detections are picked from the proposals, so fewer proposals cap them silently"),
    Rule("test_pre_nms_top_k", ">=", "test_num_proposals", _ROI + "test_pre_nms_top_k", _ROI + "test_num_proposals",
         "the proposals are kept from the test_pre_nms_top_k best-scored anchors"),
    Rule("num_proposals", ">=", "num_sampled_rois", _ROI + "num_proposals", "task.model.roi_sampler.num_sampled_rois",
         "the ROI head samples its training ROIs from the proposals"),
    Rule("num_sampled_rois", ">=", "num_sampled_masks", "task.model.roi_sampler.num_sampled_rois",
         "task.model.mask_sampler.num_sampled_masks", "the mask head samples from the ROI head's samples"),
)


class ConfigError(UserError, ValueError):
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
    checkpoint_every: int = 5           # steps between checkpoints: a disconnect loses about this many
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
    # The mask head's output side is 14 (its ROI crop) x this: 2 gives Model Garden's and
    # torchvision's 28x28; 4 gives 56x56 (finer outlines, needs mask_crop_size >= 56).
    mask_upsample: int = 2
    fpn_filters: int = 256
    rpn_convs: int = 1
    rpn_filters: int = 256
    head_convs: int = 4
    head_filters: int = 256
    head_fcs: int = 1
    head_fc_dims: int = 1024
    mask_convs: int = 4
    mask_filters: int = 256
    norm_epsilon: float = 1e-4          # Model Garden's Mask R-CNN value; torchvision's is 1e-5
    # The norms after the RPN convs, the box fc and the mask deconv frozen as identities
    # (weights converted from torchvision, which has none there).
    identity_norms: bool = False
    # Compute as torchvision does, for weights trained there (helpers.train.torchvision_ops): the
    # backbone's strided layers pad as torch does (helpers.train.torch_resnet), anchors centred on
    # k x stride and rounded, ROIAlign with 2 x 2 samples a bin. Model Garden's own padding,
    # anchors and ROIAlign for its own weights and random ones.
    torchvision_ops: bool = False
    # Backbone batch norm frozen (Model Garden's ResNet bn_trainable=False) in every stage:
    # statistics of 1-2 crops per step are noise, so a pretrained backbone keeps its own.
    freeze_backbone_norm: bool = False
    pretrained: str | None = None       # a key of STARTS, a backbone checkpoint's URL/path, or None
    # Other starts the profile offers: start -> the knobs that change with it (the
    # architecture its weights fit, its learning rates). pretrained=<start> applies them.
    starts: dict = dataclasses.field(default_factory=dict)
    mixed_precision: bool = False       # float16 on GPU only (ignored elsewhere)
    # Input magnification, the same for training crops and prediction: a crop_size crop
    # shows crop_size/scale native px, and images are enlarged by it before prediction.
    # Nuclei are 10-96 px (median 30); matterport's nucleus sample upscales 2x.
    scale: float = 1.0
    # H&E stain jitter (Tellez et al. 2019): each optical-density channel of the
    # haematoxylin-eosin-DAB decomposition becomes a*s + b, a ~ U(1-x, 1+x), b ~ U(-x, x),
    # on the image only. 0 = off; 0.05 is Tellez's "HED-light".
    stain_jitter: float = 0.0
    # Colour and blur augmentation: HoVer-Net's hue, saturation, brightness and contrast ranges
    # and its blur or noise, times this (helpers.train.train_input.photometric_jitter). 0 = off.
    photometric_jitter: float = 0.0
    # Where a training window falls: "uniform" anywhere in the image; "nuclei" centred on a
    # random nucleus, so regions are drawn in proportion to the nuclei they hold.
    crop_sampling: str = "uniform"
    # Training from random weights (no pretrained backbone; train_stage(from_scratch=True)):
    # nothing is frozen (a frozen random backbone learns nothing), and the knobs in `scratch`
    # replace the profile's: learning rates a random network needs rather than matterport's
    # fine-tuning ones, and a model small enough to take many steps in the time there is.
    from_scratch: bool = False
    scratch: dict = dataclasses.field(default_factory=dict)
    # Random seed of a stage's weights initialisation and input order (Keras' global seed and
    # task.train_data.seed). None: another draw each run. Set it to compare recipes seed by
    # seed; a different seed is a different stage (it is fingerprinted).
    seed: int | None = None

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


# Colab GPU (T4/L4, 15-24 GB): matterport's nucleus setup on Model Garden, started from
# torchvision's COCO Mask R-CNN; the registered experiment nuclei_maskrcnn
# (helpers.train.configs.nuclei_maskrcnn).
# ImageNet backbones: ResNet-101 (matterport's nucleus backbone), P2-P5, 1-conv RPN, and
# matterport's fine-tuning rates (heads 0.01, then LR/10 once the backbone trains)
_R101_IMAGENET = {"backbone": "resnet101", "max_level": 5, "rpn_convs": 1, "norm_epsilon": 1e-4,
                  "identity_norms": False, "torchvision_ops": False, "learning_rate": 0.01, "learning_rate_all": 0.001,
                  "steps": {"heads": 2000, "all": 6000, "specialist": 1000}}
_COLAB = Profile(
    name="colab",
    images_per_batch=2,             # 2 x 512^2 crops per step (matterport: IMAGES_PER_GPU 2)
    # One rule for both stages: Model Garden's schedule scaled to the batch (LR_PER_IMAGE x 2
    # = 0.00375), as detectron2 fine-tunes at its base LR once the backbone is unfrozen.
    learning_rate=LR_PER_IMAGE * 2,
    learning_rate_all=LR_PER_IMAGE * 2,
    # Sized for the free tier's few GPU hours at the estimated T4 step, its GPU compute (~0.26 s:
    # FLOPs at 12 TFLOPS; the input takes ~0.09 s a batch on the runtime's 2 CPU cores, measured
    # on idle cores by bench_input): 1,000 + 12,000 steps are ~0.07 + 0.9 h (README, "Training
    # time"), half the former ~2 h envelope, so an estimate twice too low still fits it. From COCO
    # weights that is ~25 passes over the 20 images for the heads, ~300 for all (a 512 crop = 1/4 image).
    steps={"heads": 1000, "all": 12000, "specialist": 2000},
    # A save holds training up ~0.33 s (the background save, bench_checkpoints): every 25 steps
    # (~6.5 s of T4 compute, estimate) that is ~5%; every 5 it would be ~25%. A disconnect still
    # loses under a minute: 25 steps plus two Drive copies (docs/colab.md).
    checkpoint_every=25,
    # native-resolution crops (multiple of 2^max_level). 512, not 640: on the densest real
    # images (1,862 nuclei) the input pipeline needed 11-13 GB host RAM at 640 (too much
    # for a 12.7 GB Colab) and 5.8 GB at 512, as matterport's nucleus sample crops.
    crop_size=512,
    max_num_instances=800,          # a 512^2 crop holds ~26% of <=1,900 nuclei, +60% margin
    predict_size=1024,              # 1000x1000 test images padded to a multiple of 64
    warmup_steps=200,               # ~1 pass over the data at a tenth of the LR, then cosine
    pretrained="coco",              # torchvision's COCO Mask R-CNN (docs/pretrained.md: why)
    freeze_backbone_norm=True,
    mixed_precision=True,
    stain_jitter=0.1,               # H&E jitter: +3% AP@100, +7% AP@1000 (bench_quality)
    # random weights: every layer trains at once, so one LR (x10 matterport's `all`)
    scratch={"learning_rate": 0.02, "learning_rate_all": 0.01, "freeze_backbone_norm": False,
             "torchvision_ops": False},
    starts={
        "coco": {},
        "imagenet": _R101_IMAGENET,
        "imagenet-torchvision": {**_R101_IMAGENET, "norm_epsilon": 1e-5, "torchvision_ops": True},
    },
    **COCO_ARCHITECTURE,
)

_PROFILES = {
    "colab": _COLAB,
    # No GPU (quota gone): the best that runs at a few s/step on 2 cores.
    "cpu": dataclasses.replace(
        _COLAB,
        name="cpu",
        backbone="resnet50",            # half the FLOPs of ResNet-101
        max_level=5, rpn_convs=1, norm_epsilon=1e-4, identity_norms=False, torchvision_ops=False,
        images_per_batch=1,             # memory and s/step on CPU
        checkpoint_every=5,             # 5 steps are ~7 s on 2 cores
        learning_rate=0.005,            # batch 1: matterport's 0.01 x batch / 2
        learning_rate_all=0.0005,
        steps={"heads": 500, "all": 1500, "specialist": 300},
        warmup_steps=50,
        pretrained="imagenet",          # Model Garden's ResNet-50 (ReLU, no doubt there)
        mixed_precision=False,
        max_num_instances=600,          # a 512^2 crop holds ~26% of <=1,900 nuclei, x2 margin
        num_proposals=1000,             # ~2x the nuclei in a 512 crop, cheaper on CPU
        # The ROI heads cost most of a CPU step (measured: 21.8 -> 8.0 s/step on 2 cores):
        # matterport's 2-fc box head (no convs), COCO's sample counts, a narrower mask head.
        head_convs=0,
        num_sampled_rois=256,
        num_sampled_masks=128,
        mask_filters=128,
        # From scratch nothing is gained from ResNet-50's depth in a CPU-hour, while a
        # ResNet-18 FPN of 128 channels takes ~1.6x the steps (4.9 vs 8.0 s/step) and a
        # random network needs large learning rates with a short warm-up.
        # 500 + 1,300 steps were one CPU-hour at ~1.9 s/step on 2 cores (45 min at 1.47 s/step
        # since the input is built on instance maps: bench_input), and the schedule is the
        # lever that counts there: AP50@100 0.222 -> 0.255 against 300 + 400 (bench_quality).
        # The whole hour at 1.47 s/step, 650 + 1,700, did not win with two seeds (docs/speed.md).
        scratch={"backbone": "resnet18", "fpn_filters": 128, "rpn_filters": 128, "head_filters": 128,
                 "learning_rate": 0.02, "learning_rate_all": 0.01, "warmup_steps": 50,
                 "freeze_backbone_norm": False, "torchvision_ops": False,
                 "steps": {"heads": 500, "all": 1300, "specialist": 300}},
        # torchvision's weights: COCO's whole architecture (4-conv box head: slower on CPU)
        starts={"imagenet": {}, "imagenet-torchvision": {"norm_epsilon": 1e-5, "torchvision_ops": True},
                "coco": COCO_ARCHITECTURE},
    ),
    # Tests and the README's demo run: a few steps on 2 CPU cores in a couple of minutes.
    "demo": dataclasses.replace(
        _COLAB,
        name="demo",
        backbone="resnet18",            # smallest standard ResNet in Model Garden
        max_level=5, rpn_convs=1, norm_epsilon=1e-4, identity_norms=False, torchvision_ops=False,
        freeze_backbone_norm=False,
        learning_rate_all=0.002,
        steps={"heads": 10, "all": 10, "specialist": 5},
        checkpoint_every=5,
        images_per_batch=1,
        learning_rate=0.01,
        crop_size=128,                  # tiny crops of the tiny synthetic images
        predict_size=256,
        warmup_steps=2,
        color_jitter=False,             # keep the demo run cheap and deterministic-ish
        stain_jitter=0.0,
        mixed_precision=False,
        pretrained=None,                # no downloads in tests
        scratch={},
        starts={},
        # a tiny model: synthetic images hold a few dozen nuclei
        max_num_instances=100,
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
    start = overrides.get("pretrained", prof.pretrained)
    if start != prof.pretrained and not is_checkpoint_location(start):  # the start's knobs, then the rest
        if start is not None and start not in prof.starts:
            raise ConfigError(f"profile {name}: pretrained={start!r} is not offered; choose one of "
                              f"{sorted(prof.starts) or '(none: random weights only)'} or None")
        prof = dataclasses.replace(prof, pretrained=start, **prof.starts.get(start, {}))
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
    for knob in ("checkpoint_every", "images_per_batch", "crop_size", "predict_size", "max_num_detections"):
        value = getattr(prof, knob)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{knob} {value!r}: a whole number of 1 or more"
                              + (" (steps between checkpoints; a notebook's 0 means the profile's)"
                                 if knob == "checkpoint_every" else ""))
    bad_steps = {k: v for k, v in prof.steps.items() if isinstance(v, bool) or not isinstance(v, int) or v < 1}
    if bad_steps:
        raise ConfigError(f"steps {bad_steps}: whole numbers of 1 or more")
    if not 0.0 <= prof.stain_jitter <= 0.5:
        raise ConfigError(f"stain_jitter {prof.stain_jitter!r}: use 0 (off) to 0.5 (0.05 is typical)")
    if not 0.0 <= prof.photometric_jitter <= 2.0:
        raise ConfigError(f"photometric_jitter {prof.photometric_jitter!r}: use 0 (off) to 2 (1 is HoVer-Net's ranges)")
    knobs = {f.name for f in dataclasses.fields(Profile)} - {"name", "from_scratch", "scratch", "starts", "pretrained"}
    for recipe, table in [("scratch", prof.scratch), *((f"starts[{k!r}]", v) for k, v in prof.starts.items())]:
        if set(table) - knobs:
            raise ConfigError(f"profile {prof.name}: unknown knob(s) {sorted(set(table) - knobs)} in {recipe}")
    if prof.pretrained is not None and prof.pretrained not in STARTS and not is_checkpoint_location(prof.pretrained):
        raise ConfigError(f"pretrained {prof.pretrained!r}: use one of {sorted(STARTS)}, the URL or path of a "
                          "backbone checkpoint, or None (random weights)")
    for rule in CROSS_FIELD_RULES:
        if not rule.holds(prof):
            raise ConfigError(f"profile {prof.name}: {rule.left} ({getattr(prof, rule.left)}) must be {rule.op} "
                              f"{rule.right} ({getattr(prof, rule.right)}): {rule.why}")
    if prof.crop_sampling not in CROP_SAMPLINGS:
        raise ConfigError(f"crop_sampling {prof.crop_sampling!r}: use one of {CROP_SAMPLINGS}")
    if prof.mask_upsample not in (2, 4):
        raise ConfigError(f"mask_upsample {prof.mask_upsample!r}: use 2 (28x28 masks) or 4 (56x56)")
    if prof.mask_crop_size < MASK_ROI_SIZE * prof.mask_upsample:
        raise ConfigError(f"mask_crop_size ({prof.mask_crop_size}) must be >= {MASK_ROI_SIZE * prof.mask_upsample}, "
                          f"the mask head's output side with mask_upsample {prof.mask_upsample}")
    if prof.pretrained == "coco" and prof.mask_upsample != COCO_ARCHITECTURE["mask_upsample"]:
        raise ConfigError("pretrained='coco': torchvision's mask head upsamples x2 (28x28 masks); "
                          "keep mask_upsample 2, or start from 'imagenet' or from scratch")
    stride = 2 ** prof.max_level
    if prof.crop_size % stride or prof.predict_size % stride:
        raise ConfigError(f"crop_size/predict_size must be multiples of {stride} (2^max_level)")
    if prof.scale_jitter[0] < 1.0:
        raise ConfigError("scale_jitter must not go below 1.0: nuclei are never downscaled")


def is_checkpoint_location(start) -> bool:
    """``pretrained`` given as a URL (a tar.gz) or a path of a backbone checkpoint, not a start name."""
    return isinstance(start, str) and ("://" in start or "/" in start)


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


# the stage each kind of stage starts from (its final weights)
PARENT_KIND = {"heads": None, "all": "heads", "specialist": "all"}


def parent_stage(stage: str) -> str | None:
    """The stage whose final weights a stage starts from."""
    return PARENT_KIND[stage_kind(stage)]


# Fields that may change between runs of the same stage without mixing anything:
# where the data lives, where weights started from, how often to save/log.
# NucleiTask's own fields (helpers.train.configs.nuclei_maskrcnn) and their defaults: a config written before a
# field existed lacks it, and reads as this (task_field)
TASK_FIELD_DEFAULTS = {"input_scale": 1.0, "stain_jitter": 0.0, "identity_norms": False,
                       "crop_sampling": "uniform", "photometric_jitter": 0.0}


def task_field(task_config, name: str):
    """A NucleiTask field of ``task_config``, or its default where the config lacks it."""
    value = getattr(task_config, name, None)
    return TASK_FIELD_DEFAULTS[name] if value is None else value



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
            if not (k in TASK_FIELD_DEFAULTS and v == TASK_FIELD_DEFAULTS[k])}
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


def describe(profile: str | Profile, stage: str | None = None, steps: int | None = None,
             checkpoint_every: int | None = None) -> str:
    """A few lines for the notebook: the matterport-style knobs of a profile. With ``stage``, the
    steps planned for it (``steps`` when the notebook sets them, else the profile's) and the
    notebook's ``checkpoint_every``, as the run will use them."""
    p = get_profile(profile) if isinstance(profile, str) else profile
    planned = f"steps {p.steps}" if stage is None else \
        f"{steps or p.steps[stage_kind(stage)]} steps for stage {stage}"
    start = ("random weights" if p.from_scratch or not p.pretrained
             else f"{p.pretrained} ({START_LABELS.get(p.pretrained, 'a backbone checkpoint')})")
    return (f"profile {p.name}: backbone {p.backbone}-FPN (P{p.min_level}-P{p.max_level}), start {start}, "
            f"images_per_batch {p.images_per_batch}, "
            f"learning_rate {p.learning_rate} (heads) / {p.learning_rate_all} (all), "
            f"checkpoint_every {checkpoint_every or p.checkpoint_every} steps, {planned}, "
            f"crop {p.crop_size}px " + (f"of {p.window()} native px (scale {p.scale})"
                                        if p.scale != 1.0 else "at native resolution")
            + (f", stain jitter {p.stain_jitter}" if p.stain_jitter else "")
            + (", crops centred on nuclei" if p.crop_sampling == "nuclei" else "")
            + (f", {MASK_ROI_SIZE * p.mask_upsample}px masks" if p.mask_upsample != 2 else "")
            + (", from scratch" if p.from_scratch else "") + ", anchors "
            f"{[round(p.anchor_size * 2 ** l * 2 ** (s / p.num_scales)) for l in range(p.min_level, p.max_level + 1) for s in range(p.num_scales)]} px")
