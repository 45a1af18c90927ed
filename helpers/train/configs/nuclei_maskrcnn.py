"""Our Model Garden experiment, ``nuclei_maskrcnn``, built from typed sub-configs
(as ``official/vision/configs/maskrcnn.py``; its task: :mod:`helpers.train.tasks.nuclei_maskrcnn`).

As Model Garden's ``maskrcnn_resnetfpn_coco()`` builds its experiment from ``MaskRCNNTask``,
``MaskRCNN``, ``Anchor``, ``Parser``... so does :func:`experiment_config`, from a
:class:`~helpers.train.config.Profile` (the knobs, in matterport's vocabulary) and a stage.
The registered experiment is the ``colab`` profile's heads stage; the other profiles are
small differences from it (see ``helpers.train.config``).

Rules that span fields are the experiment's ``restrictions`` (Model Garden checks them in
``validate()``), generated from :data:`helpers.train.config.CROSS_FIELD_RULES`, the same
rules ``get_profile`` checks on the knobs. This module imports TensorFlow (through Model
Garden); ``helpers.train.config`` does not.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

from official.core import config_definitions as cfg
from official.core import exp_factory
from official.modeling import optimization
from official.vision.configs import backbones, common, decoders
from official.vision.configs import maskrcnn as mg

from helpers.train.config import (CROSS_FIELD_RULES, MASK_ROI_SIZE, STARTS, TASK_FIELD_DEFAULTS, ConfigError, Profile,
                                  check_profile, get_profile, stage_kind)
from helpers.train.runtime import detect_accelerator

EXPERIMENT = "nuclei_maskrcnn"
# RandAugment ops that move pixels (boxes/masks would not follow) or erase/invert
# nuclei: Model Garden's Mask R-CNN parser applies RandAugment to the image only,
# so only in-place colour ops are allowed (its own docstring says so).
GEOMETRIC_OR_DESTRUCTIVE_OPS = [
    "Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY", "Cutout",
    "Invert", "Solarize", "SolarizeAdd",
]
# Model Garden's own restrictions of maskrcnn_resnetfpn_coco
_MG_RESTRICTIONS = ["task.train_data.is_training != None", "task.validation_data.is_training != None"]


@dataclasses.dataclass
class Backbone(backbones.Backbone):
    """Model Garden's backbone choices and ``resnet_torch``: its ResNet with torch's padding
    (:mod:`helpers.train.torch_resnet`), configured by the same fields."""

    resnet_torch: backbones.ResNet = dataclasses.field(default_factory=backbones.ResNet)


@dataclasses.dataclass
class MaskRCNN(mg.MaskRCNN):
    """Model Garden's Mask R-CNN config, whose backbone may be ``resnet_torch``, and that may take
    torchvision's anchors and ROIAlign (:mod:`helpers.train.torchvision_ops`)."""

    backbone: Backbone = dataclasses.field(default_factory=lambda: Backbone(type="resnet", resnet=backbones.ResNet()))
    torchvision_ops: bool = False  # Profile.torchvision_ops: anchors and ROIAlign as torchvision's


@dataclasses.dataclass
class NucleiTask(mg.MaskRCNNTask):
    """Model Garden's Mask R-CNN task config and fields of ours."""

    model: MaskRCNN = dataclasses.field(default_factory=MaskRCNN)

    input_scale: float = TASK_FIELD_DEFAULTS["input_scale"]  # Profile.scale: training windows, prediction input
    stain_jitter: float = TASK_FIELD_DEFAULTS["stain_jitter"]  # Profile.stain_jitter: H&E OD jitter (training)
    identity_norms: bool = TASK_FIELD_DEFAULTS["identity_norms"]  # Profile.identity_norms: held frozen
    crop_sampling: str = TASK_FIELD_DEFAULTS["crop_sampling"]  # Profile.crop_sampling: where windows fall
    photometric_jitter: float = TASK_FIELD_DEFAULTS["photometric_jitter"]  # Profile.photometric_jitter (training)


def start_modules(prof: Profile):
    """What a fresh heads stage loads from its start's checkpoint: Model Garden's
    ``init_checkpoint_modules`` ("backbone", or the list of the COCO start)."""
    modules = STARTS.get(prof.pretrained, ("backbone",))
    return modules[0] if len(modules) == 1 else list(modules)


def restrictions() -> list[str]:
    """Model Garden's restrictions and ours, in its ``"a.b > c.d"`` syntax."""
    return _MG_RESTRICTIONS + [f"{rule.field_left} {rule.op} {rule.field_right}" for rule in CROSS_FIELD_RULES]


def experiment_config(
    profile: str | Profile,
    stage: str = "heads",
    train_files: Sequence[str] = (),
    steps: int | None = None,
    init_checkpoint: str | None = None,
    accelerator: str | None = None,
    init_modules: str | Sequence[str] | None = None,
    kind: str | None = None,
) -> cfg.ExperimentConfig:
    """The Model Garden ``ExperimentConfig`` for one profile and stage.

    Args:
      profile: profile name or a :class:`Profile`.
      stage: ``heads``, ``all``, ``final`` or ``specialist-<name>``.
      train_files: TFRecord shard paths (one image each) to train on.
      steps: planned global steps of the stage (the LR schedule spans them);
        defaults to the profile's ``steps[<stage kind>]``.
      init_checkpoint: checkpoint to start from when the stage has none yet
        (pretrained backbone for ``heads``; the parent stage's final
        checkpoint for ``all``/specialist).
      accelerator: 'gpu'/'tpu'/'cpu'; detected when None. Decides mixed precision.
      init_modules: what to load from ``init_checkpoint`` on a fresh stage; default
        for heads the profile's start's (:func:`start_modules`), "all" otherwise.
      kind: the stage's kind when the caller has parsed its name already
        (:class:`helpers.train.stages.Stage`).
    """
    prof = get_profile(profile) if isinstance(profile, str) else profile
    check_profile(prof)
    kind = kind or stage_kind(stage)
    total = int(steps if steps is not None else prof.steps[kind])
    if total < 1:
        raise ConfigError(f"steps must be >= 1, got {total}")
    dtype = _precision(accelerator or detect_accelerator(), prof)
    modules = init_modules or (start_modules(prof) if kind == "heads" else "all")
    exp = cfg.ExperimentConfig(
        runtime=cfg.RuntimeConfig(
            mixed_precision_dtype=dtype,
            enable_xla=False,  # XLA recompiles for every new image shape at prediction
        ),
        task=NucleiTask(
            init_checkpoint=init_checkpoint or "",
            # heads: only the (pretrained) backbone; all/specialist: the whole parent model.
            init_checkpoint_modules=modules if isinstance(modules, str) else list(modules),
            # matterport layers='heads': backbone frozen (also keeps its BN statistics),
            # unless it is random (from scratch).
            freeze_backbone=prof.freezes_backbone(kind),
            input_scale=prof.scale,
            stain_jitter=prof.stain_jitter,
            identity_norms=prof.identity_norms,
            crop_sampling=prof.crop_sampling,
            photometric_jitter=prof.photometric_jitter,
            annotation_file="",
            use_coco_metrics=False,  # we evaluate with pycocotools ourselves
            model=_model(prof),
            losses=mg.Losses(l2_weight_decay=prof.weight_decay),
            train_data=_train_data(prof, train_files, dtype),
            validation_data=mg.DataConfig(input_path="", is_training=False, global_batch_size=1, dtype=dtype,
                                          drop_remainder=False),
        ),
        trainer=_trainer(prof, kind, total),
        restrictions=restrictions(),
    )
    exp.validate()
    return exp


@exp_factory.register_config_factory(EXPERIMENT)
def nuclei_maskrcnn() -> cfg.ExperimentConfig:
    """Nuclei in H&E tiles: the colab profile's heads stage (COCO-trained ResNet-50 FPN, 512 px crops)."""
    return experiment_config("colab", "heads", accelerator="gpu")


def _precision(accelerator: str, prof: Profile) -> str:
    """Mixed precision and input dtype: bfloat16 on TPU, float16 on GPU when the profile
    allows it, else float32."""
    if accelerator == "tpu":
        return "bfloat16"
    if accelerator == "gpu" and prof.mixed_precision:
        return "float16"
    return "float32"


def _model(prof: Profile) -> MaskRCNN:
    """``task.model``: the architecture knobs of the profile (matterport's names in docs/profiles.md)."""
    resnet = backbones.ResNet(model_id=prof.resnet_depth, bn_trainable=not prof.freeze_backbone_norm)
    backbone = (Backbone(type="resnet_torch", resnet_torch=resnet) if prof.torchvision_ops
                else Backbone(type="resnet", resnet=resnet))
    return MaskRCNN(
        torchvision_ops=prof.torchvision_ops,
        num_classes=2,  # background + nucleus
        input_size=[prof.crop_size, prof.crop_size, 3],
        include_mask=True,
        min_level=prof.min_level,
        max_level=prof.max_level,
        anchor=mg.Anchor(anchor_size=prof.anchor_size, num_scales=prof.num_scales,
                         aspect_ratios=list(prof.aspect_ratios)),
        backbone=backbone,
        decoder=decoders.Decoder(type="fpn", fpn=decoders.FPN(num_filters=prof.fpn_filters)),
        rpn_head=mg.RPNHead(num_convs=prof.rpn_convs, num_filters=prof.rpn_filters),
        detection_head=mg.DetectionHead(num_convs=prof.head_convs, num_filters=prof.head_filters,
                                        num_fcs=prof.head_fcs, fc_dims=prof.head_fc_dims),
        mask_head=mg.MaskHead(num_convs=prof.mask_convs, num_filters=prof.mask_filters,
                              upsample_factor=prof.mask_upsample),
        mask_roi_aligner=mg.MaskROIAligner(crop_size=MASK_ROI_SIZE),
        roi_generator=mg.ROIGenerator(
            pre_nms_top_k=max(2 * prof.num_proposals, 2000),
            num_proposals=prof.num_proposals,
            test_pre_nms_top_k=prof.test_pre_nms_top_k,
            test_num_proposals=prof.test_num_proposals,
        ),
        roi_sampler=mg.ROISampler(num_sampled_rois=prof.num_sampled_rois,
                                  foreground_fraction=prof.roi_fg_fraction),
        mask_sampler=mg.MaskSampler(num_sampled_masks=prof.num_sampled_masks),
        detection_generator=mg.DetectionGenerator(
            max_num_detections=prof.max_num_detections,
            pre_nms_top_k=max(prof.test_num_proposals, 1000),
            pre_nms_score_threshold=0.05,
        ),
        # MaskRCNN's own batch-norm values; sync BN only helps with many replicas of a large batch.
        norm_activation=common.NormActivation(norm_momentum=0.997, norm_epsilon=prof.norm_epsilon,
                                              use_sync_bn=False),
    )


def _train_data(prof: Profile, train_files: Sequence[str], dtype: str) -> mg.DataConfig:
    """``task.train_data``: the shards, the batch and the parser's augmentation."""
    # Training examples reach Model Garden's parser as windows of crop/scale native px
    # (helpers.train.train_input.WindowDecoder, task.input_scale). The parser scales its input
    # by aug_scale * crop / window side, so the magnification is scale * aug_scale.
    # (Images smaller than the window, e.g. demo ones, are enlarged to the crop.)
    lo, hi = prof.scale_jitter
    colour = (common.Augmentation(type="randaug", randaug=common.RandAugment(
        num_layers=2, magnitude=5, exclude_ops=list(GEOMETRIC_OR_DESTRUCTIVE_OPS))) if prof.color_jitter else None)
    return mg.DataConfig(
        input_path=list(train_files),
        is_training=True,
        global_batch_size=prof.images_per_batch,
        dtype=dtype,
        shuffle_buffer_size=64,  # one image per shard file: ~20-100 items
        seed=prof.seed,
        parser=mg.Parser(
            aug_rand_hflip=True,
            aug_rand_vflip=True,  # h+v flips also give 180-degree rotations
            aug_scale_min=lo,
            aug_scale_max=hi,
            aug_type=colour,
            max_num_instances=prof.max_num_instances,
            rpn_batch_size_per_im=prof.rpn_batch_size_per_im,
            rpn_fg_fraction=prof.rpn_fg_fraction,
            mask_crop_size=prof.mask_crop_size,
        ),
    )


def _trainer(prof: Profile, kind: str, total: int) -> cfg.TrainerConfig:
    """``trainer``: the stage's steps, checkpointing and its SGD + cosine schedule."""
    lr = prof.stage_learning_rate(kind)
    return cfg.TrainerConfig(
        train_steps=total,
        steps_per_loop=1,          # progress line and time-budget check every step
        summary_interval=1,        # TensorBoard point every step
        checkpoint_interval=prof.checkpoint_every,
        max_to_keep=prof.keep_checkpoints,
        validation_interval=total,
        validation_steps=1,
        recovery_max_trials=-1,    # no silent rollback on loss spikes
        optimizer_config=optimization.OptimizationConfig({
            "optimizer": {"type": "sgd", "sgd": {"momentum": 0.9, "global_clipnorm": prof.gradient_clip_norm}},
            # Schedule over the stage's global steps: resuming continues it.
            "learning_rate": {"type": "cosine", "cosine": {
                "initial_learning_rate": lr, "decay_steps": total, "alpha": 0.01}},
            "warmup": {"type": "linear", "linear": {
                "warmup_steps": min(prof.warmup_steps, max(total // 5, 0)), "warmup_learning_rate": lr * 0.1}},
        }),
    )
