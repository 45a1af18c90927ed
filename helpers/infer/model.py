"""Build a trained stage's Mask R-CNN for prediction and run it on full-resolution images.

    model, params = load_model(ws, "all")            # newest complete checkpoint: a LoadedModel
    det = predict_image(model, params, image)        # uint8 HxWx3, any size
    det["boxes"], det["scores"], det["masks"]        # box-relative mask probabilities

Pasting the masks into the image is :func:`detections_from_model_garden`.

The architecture comes from the config stored with the stage's checkpoints
(``stage.json``), so a model is always rebuilt exactly as it was trained; only
the input size changes (prediction runs on the whole image, padded to a
multiple of 2^max_level, never resized).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from helpers.detections import Detections
from helpers.rle import encode_masks
from helpers.train import checkpoints as ckpts
from helpers.train import config as cfglib
from helpers.train.stages import Stage
from helpers.errors import InvalidRequest, UserError


class CheckpointNotFound(UserError, FileNotFoundError):
    pass


class StageUnfinished(CheckpointNotFound):
    """The stage's newest checkpoint is short of its planned steps (and unfinished ones were not asked for)."""


def open_stage(workspace, stage) -> Stage:
    """``stage`` (a name, or a :class:`~helpers.train.stages.Stage` already opened) with its record;
    :class:`CheckpointNotFound` when it has not been trained."""
    try:
        st = Stage.open(workspace, stage)
    except cfglib.ConfigError as e:  # no such stage name: it cannot have been trained either
        raise CheckpointNotFound(f"stage {stage!r} has not been trained: {e}") from e
    if st.record is None:
        raise CheckpointNotFound(f"{st.record_path} not found: stage {st.name!r} has not been trained "
                                 "in this workspace (run notebook 02/03 first)")
    return st


def stage_params(workspace, stage, profile: str | None = None):
    """The stage's training ExperimentConfig, rebuilt (strictly) from its ``stage.json``;
    ``(params, record)``."""
    from official.core import exp_factory

    from helpers.train.configs.nuclei_maskrcnn import EXPERIMENT

    st = open_stage(workspace, stage)
    info = st.record
    if profile and info["profile"] != profile:
        raise InvalidRequest(f"stage {st.name!r} in {st.folder} was trained with profile "
                             f"{info['profile']!r}, not {profile!r}")
    params = exp_factory.get_exp_config(EXPERIMENT)
    try:
        params.override(info["config"], is_strict=True)
    except (KeyError, ValueError, TypeError) as e:
        raise cfglib.ConfigError(
            f"{st.record_path} records a config this version of Model Garden cannot rebuild ({e}). The "
            "stage was trained with another tf-models-official: predict with that version, or train the "
            "stage again.") from e
    return params, info


def resolve_checkpoint(workspace, stage, checkpoint=None, unfinished: bool = False) -> Path:
    """A checkpoint prefix: a step (int), a path, or (None) the newest complete one, which must be
    the stage's planned last step: :class:`StageUnfinished` when it is short of it (unless
    ``unfinished``), :class:`CheckpointNotFound` when it is beyond it (no training of this stage
    wrote it)."""
    sdir = stage.folder if isinstance(stage, Stage) else Stage.folder_of(workspace, stage)
    name = getattr(stage, "name", stage)
    if checkpoint is None:
        latest = ckpts.latest_complete(sdir, repair=False)
        if not latest:
            raise CheckpointNotFound(f"no complete checkpoint in {sdir}; train stage {name!r} first")
        st = stage if isinstance(stage, Stage) and stage.record else Stage.open(workspace, name)
        _check_planned(st, *latest, unfinished)
        return latest[1]
    prefix = sdir / f"ckpt-{checkpoint}" if isinstance(checkpoint, int) else Path(checkpoint)
    if prefix.suffix in (".index",):
        prefix = prefix.with_suffix("")
    reason = ckpts.check_checkpoint(prefix)
    if reason:
        raise CheckpointNotFound(f"{prefix} cannot be used: {reason}")
    return prefix


def _check_planned(stage: Stage, step: int, prefix: Path, unfinished: bool) -> None:
    planned = stage.planned_steps
    if planned is None:
        return  # no record: open_stage says so where it matters
    if step > planned:
        raise CheckpointNotFound(
            f"{prefix} is step {step}, beyond the {planned} steps stage {stage.name!r} planned ({stage.record_path}): "
            f"its training did not write it (copied in from elsewhere?). Move it out of {stage.folder}, or name it "
            "(checkpoint=...) to predict with it on purpose.")
    if step < planned and not unfinished:
        raise StageUnfinished(
            f"stage {stage.name!r} is unfinished: its newest checkpoint is step {step} of the {planned} planned. "
            "Run its training notebook again to finish it (it resumes), or set use_unfinished = True to "
            f"predict with {prefix.name} on purpose.")
    if step < planned:
        print(f"note: stage {stage.name!r} is unfinished: predicting with {prefix.name}, step {step} of {planned} "
              "(use_unfinished)")


_OUTPUTS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections", "detection_masks")


@dataclass(eq=False)
class LoadedModel:
    """A Keras Mask R-CNN restored for prediction and its inference function: a ``tf.function``
    traced once per padded image size (the anchors need static shapes), kept with the model so
    that every image of a size after the first reuses the trace. :func:`predict_image` runs it.
    """
    keras: Any  # the tf_keras Model Garden MaskRCNNModel, weights restored
    infer: Callable = field(init=False, repr=False)  # (images, image_shape) -> {output: tensor}

    def __post_init__(self):
        import tensorflow as tf

        keras = self.keras

        @tf.function
        def infer(images, image_shape):
            out = keras(images, image_shape=image_shape, training=False)
            return {k: out[k] for k in _OUTPUTS if k in out}

        self.infer = infer


def load_model(workspace, stage: str, profile: str | None = None, checkpoint=None,
               image_size: int | None = None, min_score: float | None = None,
               max_detections: int | None = None, unfinished: bool = False) -> tuple[LoadedModel, Any]:
    """``(model, params)`` for prediction, restored from a complete checkpoint.

    Args:
      workspace: Workspace or path.
      stage: "heads", "all" or "specialist-<name>".
      profile: optional check that the stage was trained with this profile.
      checkpoint: None (newest complete), a step number, or a checkpoint prefix.
      image_size: side of the dummy input the model is built with; default the
        profile's ``predict_size``. Any image size works afterwards.
      min_score: the detection generator's score floor (Model Garden default 0.05).
      max_detections: override the profile's ``max_num_detections``.
      unfinished: accept a stage short of its planned steps (:func:`resolve_checkpoint`).
    Returns a :class:`LoadedModel` (the Keras model, weights restored, with its inference
    function) and its ExperimentConfig; the restored checkpoint path is
    ``params.task.init_checkpoint``.
    """
    import tensorflow as tf
    import tf_keras

    from helpers.train import torch_resnet, torchvision_ops  # noqa: F401 - registers the backbone "resnet_torch"

    st = open_stage(workspace, stage)
    params, info = stage_params(workspace, st, profile)
    prefix = resolve_checkpoint(workspace, st, checkpoint, unfinished)
    size = int(image_size or cfglib.get_profile(info["profile"]).predict_size)
    stride = 2 ** params.task.model.max_level
    size = -(-size // stride) * stride
    params.override({
        "runtime": {"mixed_precision_dtype": "float32"},
        "task": {"model": {"input_size": [size, size, 3]}, "freeze_backbone": False,
                 "init_checkpoint": str(prefix), "init_checkpoint_modules": "all"},
    }, is_strict=True)
    det = {}
    if min_score is not None:
        det["pre_nms_score_threshold"] = float(min_score)
    if max_detections is not None:
        det["max_num_detections"] = int(max_detections)
    if det:
        params.override({"task": {"model": {"detection_generator": det}}}, is_strict=True)
    tf_keras.mixed_precision.set_global_policy("float32")
    # Model Garden's factory, as the task's build_model uses it, but with a
    # free input height/width so any padded image size can be fed.
    model = torchvision_ops.build_maskrcnn(
        input_specs=tf_keras.layers.InputSpec(shape=[None, None, None, 3]),
        model_config=params.task.model)
    _ = model(tf.zeros([1, size, size, 3]), image_shape=tf.constant([[size, size]], tf.float32),
              training=False)
    from helpers.train.drive_copy import full_checkpoint

    status = tf.train.Checkpoint(model=model).read(str(full_checkpoint(prefix)))  # a Drive copy: expanded
    status.expect_partial().assert_existing_objects_matched()
    return LoadedModel(model), params


def input_scale(params) -> float:
    """How much a stage enlarges its input (``Profile.scale``; 1.0 for older stages)."""
    return float(cfglib.task_field(params.task, "input_scale"))


def predict_image(model: LoadedModel, params, image: np.ndarray, score_threshold: float = 0.05,
                  zoom: float = 1.0) -> dict:
    """Run the model on one full-resolution image (enlarged by the stage's input scale
    times ``zoom``, then padded); boxes and masks come back in the image's pixels.

    Args:
      model, params: what :func:`load_model` returns.
      image: uint8 array (H, W, 3).
      score_threshold: drop detections scoring below this.
      zoom: a multi-scale view's extra enlargement (``helpers.infer.tta.ZOOMS``).
    Returns a dict of numpy arrays, sorted by descending score:
      boxes (N, 4) float [ymin, xmin, ymax, xmax] in image pixels;
      scores (N,); classes (N,) int (1 = nucleus);
      masks (N, m, m) float32 mask probabilities relative to each box;
      image_shape (H, W).
    """
    import tensorflow as tf
    from official.vision.ops import preprocess_ops

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    stride = 2 ** params.task.model.max_level
    x = preprocess_ops.normalize_image(tf.convert_to_tensor(image))
    # Enlarged by the stage's input scale (as its training crops were), then padded.
    want = [int(round(h * input_scale(params) * zoom)), int(round(w * input_scale(params) * zoom))]
    padded = preprocess_ops.compute_padded_size(want, stride)
    x, info = preprocess_ops.resize_and_crop_image(x, want, padded_size=padded)
    out = model.infer(x[None], info[1][None])
    n = int(out["num_detections"][0])
    scale = info[2].numpy()  # (sy, sx): the input scale; boxes go back to image pixels
    boxes = out["detection_boxes"][0, :n].numpy() / np.tile(scale, 2)
    scores = out["detection_scores"][0, :n].numpy()
    keep = scores >= score_threshold
    order = np.argsort(-scores[keep], kind="stable")
    return {
        "boxes": boxes[keep][order].astype(np.float32),
        "scores": scores[keep][order].astype(np.float32),
        "classes": out["detection_classes"][0, :n].numpy()[keep][order].astype(np.int32),
        "masks": out["detection_masks"][0, :n].numpy()[keep][order].astype(np.float32),
        "image_shape": (h, w),
    }


# --------------------------------------------------------------------------- Model Garden's outputs -> Detections
def detections_from_model_garden(box_masks: np.ndarray, boxes_yxyx: np.ndarray, scores: np.ndarray,
                                 size: Sequence[int], num_detections: int | None = None,
                                 chunk: int = 64) -> Detections:
    """Detections of one image from Model Garden Mask R-CNN outputs, pasted the way Model
    Garden's own COCO evaluation does it (``box_ops.yxyx_to_xywh`` +
    ``mask_ops.paste_instance_masks``, threshold 0.5), ``chunk`` masks at a time so only
    ``chunk`` full-size masks exist at once.

    ``box_masks`` (K, m, m) box-relative mask probabilities, ``boxes_yxyx`` (K, 4) in pixel
    coordinates of the image of ``size = (H, W)``, ``scores`` (K,); only the first
    ``num_detections`` are used (Model Garden pads to a fixed K).
    """
    from official.vision.ops import box_ops, mask_ops

    height, width = int(size[0]), int(size[1])
    n = len(scores) if num_detections is None else int(num_detections)
    box_masks = np.asarray(box_masks)[:n]
    boxes = np.asarray(boxes_yxyx, np.float64)[:n]
    scores = np.asarray(scores, np.float64)[:n]
    if len(box_masks) != n or len(boxes) != n or len(scores) != n:
        raise ValueError(f"need {n} masks, boxes and scores; got {len(box_masks)}, {len(boxes)}, {len(scores)}")
    if n == 0:
        return Detections.empty((height, width))
    xywh = box_ops.yxyx_to_xywh(boxes)
    rles: list[dict] = []
    for s in range(0, n, max(1, int(chunk))):
        pasted = mask_ops.paste_instance_masks(box_masks[s:s + chunk], xywh[s:s + chunk], height, width)
        rles.extend(encode_masks(pasted))
    return Detections(rles, scores, (height, width), mask_scores=mask_confidence(box_masks))


def mask_confidence(box_masks: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Mean probability inside each mask (pixels above ``threshold``) of (K, m, m) box-relative
    mask probabilities; 0 for a mask with no pixel above it."""
    m = np.asarray(box_masks, np.float64)
    inside = m > threshold
    n = inside.sum(axis=(1, 2))
    return np.where(n > 0, (m * inside).sum(axis=(1, 2)) / np.maximum(n, 1), 0.0)
