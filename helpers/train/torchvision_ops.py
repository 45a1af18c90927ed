"""Model Garden's Mask R-CNN computing what torchvision's computes: its anchors and its ROIAlign.

Weights converted from torchvision (:mod:`helpers.train.torch_convert`) were trained against
torchvision's geometry, which differs from Model Garden's in three places; the model config's
``torchvision_ops`` (the profile's knob of the same name) takes torchvision's in all three:

- **padding** of the backbone's strided layers: :mod:`helpers.train.torch_resnet`;
- **anchors**: torchvision centres them on ``k x stride`` and rounds each base anchor
  ``[-w, -h, w, h] / 2`` to whole pixels (``AnchorGenerator``); Model Garden centres them on
  ``(k + 1/2) x stride``, unrounded, and has no setting for it. :func:`anchor_boxes` makes
  torchvision's in Model Garden's layout (level -> [H, W, A*4], ``[y0, x0, y1, x1]``, its
  anchor order), for the training labels and for the model;
- **ROIAlign**: torchvision's ``MultiScaleRoIAlign`` averages 2 x 2 bilinear samples a bin
  (``sampling_ratio=2, aligned=False``: a box at least one feature pixel, zero beyond the map)
  and pools from P2-P5 only; Model Garden's ``MultilevelROIAligner`` takes one sample at the
  centre of each bin and pools from every level. :class:`TorchvisionROIAligner` is Model Garden's aligner sampling twice as finely,
  averaged 2 x 2, on P2-P5: the same samples, the same average.

:func:`build_maskrcnn` is Model Garden's ``factory.build_maskrcnn`` with these swapped in when
the config asks; the layers and their variables are Model Garden's, so checkpoints are the same.
"""
from __future__ import annotations

import collections
import math

import numpy as np
import tensorflow as tf
import tf_keras
from official.vision.modeling import factory, maskrcnn_model
from official.vision.modeling.layers import roi_aligner

SAMPLING_RATIO = 2        # torchvision's MultiScaleRoIAlign(sampling_ratio=2) in every Mask R-CNN
POOLED_LEVELS = (2, 5)    # its box and mask ROIs are pooled from featmap_names '0'-'3': P2-P5


def uses_torchvision_ops(model_config) -> bool:
    """Whether a ``task.model`` config computes as torchvision does (older configs: no)."""
    return bool(getattr(model_config, "torchvision_ops", False))


def base_anchors(size: float, aspect_ratio: float) -> np.ndarray:
    """torchvision's base anchor ``[x0, y0, x1, y1]`` of one size and Model Garden's aspect ratio
    (width / height; torchvision's is height / width), computed in float32 as
    ``AnchorGenerator.generate_anchors`` does and rounded half to even as ``torch.round``."""
    h_ratio = np.sqrt(np.float32(1.0 / aspect_ratio))
    w_ratio = np.float32(1.0) / h_ratio
    ws, hs = w_ratio * np.float32(size), h_ratio * np.float32(size)
    return np.round(np.stack([-ws, -hs, ws, hs]) / np.float32(2.0))


def anchor_boxes(image_size, min_level: int, max_level: int, num_scales: int, aspect_ratios,
                 anchor_size: float) -> "collections.OrderedDict[str, tf.Tensor]":
    """torchvision's anchors for an image of static ``image_size`` (h, w), in the layout and order
    of Model Garden's ``Anchor.multilevel_boxes``: level -> float32 [H_l, W_l, A*4] of
    ``[y0, x0, y1, x1]``, A = num_scales x len(aspect_ratios), scales outermost."""
    height, width = (int(v) for v in image_size)
    boxes = collections.OrderedDict()
    for level in range(min_level, max_level + 1):
        feat_h, feat_w = math.ceil(height / 2 ** level), math.ceil(width / 2 ** level)
        stride_y, stride_x = height // feat_h, width // feat_w  # torchvision's integer strides
        ys = np.arange(feat_h, dtype=np.float32) * stride_y
        xs = np.arange(feat_w, dtype=np.float32) * stride_x
        per_location = []
        for scale in range(num_scales):
            for ratio in aspect_ratios:
                x0, y0, x1, y1 = base_anchors(anchor_size * 2 ** level * 2 ** (scale / num_scales), ratio)
                per_location.append(np.stack(np.broadcast_arrays(
                    ys[:, None] + y0, xs[None, :] + x0, ys[:, None] + y1, xs[None, :] + x1), axis=-1))
        boxes[str(level)] = tf.constant(np.concatenate(per_location, axis=-1), tf.float32)
    return boxes


def pooled_level(boxes):
    """The level ``LevelMapper`` pools each ``[y0, x0, y1, x1]`` box from: 4 + log2(sqrt(area) / 224),
    floored, on P2-P5 (float32, boxes' shape without the last axis)."""
    y0, x0, y1, x1 = tf.unstack(boxes, axis=-1)
    lo, hi = POOLED_LEVELS
    area = tf.maximum((y1 - y0) * (x1 - x0), 1e-12)
    return tf.clip_by_value(tf.floor(4.0 + tf.math.log(tf.sqrt(area) / 224.0) / math.log(2.0) + 1e-6),
                            float(lo), float(hi))


def at_least_one_feature_pixel(boxes, level):
    """Boxes made at least one pixel of their level, by moving y1 and x1, as ``roi_align`` does
    unaligned (``max(roi_end - roi_start, 1)``). Model Garden's aligner assigns the larger box the
    same level unless it is taller or wider than 784 x 2^level px."""
    y0, x0, y1, x1 = tf.unstack(boxes, axis=-1)
    stride = tf.pow(2.0, level)
    return tf.stack([y0, x0, tf.maximum(y1, y0 + stride), tf.maximum(x1, x0 + stride)], axis=-1)


def samples_inside(boxes, level, features, samples: int):
    """[B, N, samples, samples, 1]: 1 where a sample point of the box's grid lies within its
    level's feature map plus one pixel, 0 beyond, where ``roi_align`` reads zero and Model
    Garden's sampler repeats the edge (a box thinner than one pixel at the bottom/right edge)."""
    y0, x0, y1, x1 = (v / tf.pow(2.0, level) for v in tf.unstack(boxes, axis=-1))
    lo, hi = POOLED_LEVELS
    sizes = tf.cast(tf.stack([tf.shape(features[str(k)])[1:3] for k in range(lo, hi + 1)]), tf.float32)
    height, width = tf.unstack(tf.gather(sizes, tf.cast(level, tf.int32) - lo), axis=-1)
    steps = (tf.range(samples, dtype=tf.float32) + 0.5) / samples
    ys = y0[..., None] + steps * (y1 - y0)[..., None]
    xs = x0[..., None] + steps * (x1 - x0)[..., None]
    inside_y = tf.cast((ys >= -1.0) & (ys <= height[..., None]), tf.float32)
    inside_x = tf.cast((xs >= -1.0) & (xs <= width[..., None]), tf.float32)
    return (inside_y[..., :, None] * inside_x[..., None, :])[..., None]


@tf_keras.utils.register_keras_serializable(package="Nuclei")
class TorchvisionROIAligner(tf_keras.layers.Layer):
    """torchvision's ``MultiScaleRoIAlign(output_size=crop_size, sampling_ratio=2)``: Model
    Garden's ``MultilevelROIAligner`` at ``2 x crop_size`` (its samples at the bins' quarter
    points) averaged 2 x 2, on the levels torchvision pools from."""

    def __init__(self, crop_size: int = 7, **kwargs):
        super().__init__(**kwargs)
        self._config_dict = {"crop_size": crop_size}
        self._aligner = roi_aligner.MultilevelROIAligner(crop_size=crop_size * SAMPLING_RATIO, sample_offset=0.5)

    def call(self, features, boxes, training=None):
        lo, hi = POOLED_LEVELS
        pooled = {k: v for k, v in features.items() if lo <= int(k) <= hi}
        boxes = tf.cast(boxes, tf.float32)
        level = pooled_level(boxes)
        boxes = at_least_one_feature_pixel(boxes, level)
        samples = 2 * self._config_dict["crop_size"]
        crops = self._aligner(pooled, boxes, training=training)  # [B, N, 2c, 2c, C]
        crops *= tf.cast(samples_inside(boxes, level, pooled, samples), crops.dtype)
        shape = tf.shape(crops)
        flat = tf.reshape(crops, tf.concat([[-1], shape[2:]], axis=0))
        averaged = tf.nn.avg_pool2d(flat, SAMPLING_RATIO, SAMPLING_RATIO, "VALID")
        size = self._config_dict["crop_size"]
        return tf.reshape(averaged, tf.concat([shape[:2], [size, size], shape[4:]], axis=0))

    def get_config(self):
        return {**super().get_config(), **self._config_dict}


@tf_keras.utils.register_keras_serializable(package="Nuclei")
class TorchvisionMaskRCNNModel(maskrcnn_model.MaskRCNNModel):
    """Model Garden's ``MaskRCNNModel`` whose anchors are torchvision's (:func:`anchor_boxes`),
    not ``anchor.Anchor``'s, whatever anchors the caller passes: the training labels are made
    for the same ones (``instance_map_input.parser_anchors``), and Model Garden's evaluation
    parser, which passes its own, would otherwise shift them by half a stride."""

    def _call_box_outputs(self, images, image_shape, anchor_boxes=None, **kwargs):
        _, height, width, _ = images.get_shape().as_list()
        anchor_boxes = {
            level: tf.tile(boxes[None], [tf.shape(images)[0], 1, 1, 1])
            for level, boxes in torchvision_anchors(self._config_dict, (height, width)).items()}
        return super()._call_box_outputs(images, image_shape, anchor_boxes, **kwargs)


def torchvision_anchors(anchor_config, image_size):
    """:func:`anchor_boxes` of a model's or a parser's anchor settings (a mapping with Model
    Garden's names: min_level, max_level, num_scales, aspect_ratios, anchor_size)."""
    return anchor_boxes(image_size, anchor_config["min_level"], anchor_config["max_level"],
                        anchor_config["num_scales"], anchor_config["aspect_ratios"], anchor_config["anchor_size"])


def build_maskrcnn(input_specs, model_config, l2_regularizer=None) -> tf_keras.Model:
    """Model Garden's ``factory.build_maskrcnn``, with torchvision's anchors and ROIAlign when
    ``model_config.torchvision_ops`` (the backbone's padding comes with its config)."""
    model = factory.build_maskrcnn(input_specs=input_specs, model_config=model_config,
                                   l2_regularizer=l2_regularizer)
    return as_torchvision(model, model_config)


def as_torchvision(model, model_config):
    """``model`` (built by Model Garden's factory) with torchvision's anchors and ROIAlign when
    the config asks, sharing its layers; ``model`` itself otherwise."""
    if not uses_torchvision_ops(model_config):
        return model
    config = dict(model.get_config())
    config["roi_aligner"] = TorchvisionROIAligner(crop_size=model_config.roi_aligner.crop_size)
    config["mask_roi_aligner"] = TorchvisionROIAligner(crop_size=model_config.mask_roi_aligner.crop_size)
    return TorchvisionMaskRCNNModel.from_config(config)
