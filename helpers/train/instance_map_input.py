"""Training input from instance maps: each image decoded once, targets computed where they are.

Model Garden's Mask R-CNN input decodes every image per step, turns each nucleus into a plane
the size of the crop, flips and crops those hundreds of planes, and labels every anchor against
every box. On the 2 CPU cores of a Colab runtime that is most of a training step (the
benchmark ``benchmarks/bench_input.py`` times each part). Here, by design:

* **Decoded once.** The training images (image and 16-bit instance map, ~5 MB each at 1000 px)
  are decoded on the first pass and kept in memory by ``tf.data``'s cache; later passes cut
  their windows from memory (:func:`decode_whole`).
* **One map, not a plane per nucleus.** The window's instance map is flipped with the image; the
  nuclei's boxes come from it by segment min/max, and each nucleus's mask target is sampled
  from it (:func:`indicator_crop_and_resize`: ``tf.image.crop_and_resize``'s bilinear sampling of
  the nucleus's 0/1 indicator, read from the map at the four neighbours of each sample).
* **Anchors labelled locally** (:mod:`helpers.train.anchor_labels`).

What the model trains on is unchanged: :class:`InstanceMapParser` is Model Garden's
``maskrcnn_input.Parser``, its training path rebuilt on the map, and gives the targets Model
Garden's parser gives for the same window, flips and scale (``tests/train/test_fast_input.py``
compares them: image, boxes, classes, masks, RPN score and box targets). Images stored without
an instance map (overlapping masks) are read the old way (:class:`~helpers.train.train_input.WindowDecoder`).
"""
from __future__ import annotations

import tensorflow as tf
from official.vision.dataloaders import maskrcnn_input
from official.vision.ops import anchor as mg_anchor
from official.vision.ops import box_ops, preprocess_ops

from helpers.data.shards import INSTANCE_MAP_KEY
from helpers.train import torchvision_ops
from helpers.train.anchor_labels import LocalRpnAnchorLabeler
from helpers.train.train_input import photometric_jitter, stain_jitter, window_corner

_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature((), tf.string),
    "image/source_id": tf.io.FixedLenFeature((), tf.string),
    INSTANCE_MAP_KEY: tf.io.FixedLenFeature((), tf.string, default_value=""),
    "image/object/class/label": tf.io.VarLenFeature(tf.int64),
    "image/object/is_crowd": tf.io.VarLenFeature(tf.int64),
    **{f"image/object/bbox/{k}": tf.io.VarLenFeature(tf.float32) for k in ("ymin", "xmin", "ymax", "xmax")},
}


def has_instance_map(record: bytes) -> bool:
    """Whether a shard record stores its nuclei as an instance map (shards of overlapping masks do not)."""
    ex = tf.train.Example.FromString(record)
    return INSTANCE_MAP_KEY in ex.features.feature and bool(ex.features.feature[INSTANCE_MAP_KEY].bytes_list.value)


def decode_whole(serialized):
    """One shard record, decoded whole and kept small for the cache: the uint8 image, the
    uint16 instance map (pixel = object number, 0 = background), classes, crowd flags and the
    normalized boxes (where nuclei-centred windows fall)."""
    p = tf.io.parse_single_example(serialized, _FEATURES)
    dense = {k: tf.sparse.to_dense(v) if isinstance(v, tf.SparseTensor) else v for k, v in p.items()}
    classes = dense["image/object/class/label"]
    crowd = dense["image/object/is_crowd"]
    return {
        "source_id": dense["image/source_id"],
        "image": tf.io.decode_image(dense["image/encoded"], channels=3, expand_animations=False),
        "instance_map": tf.io.decode_png(dense[INSTANCE_MAP_KEY], channels=1, dtype=tf.uint16)[..., 0],
        "classes": classes,
        "is_crowd": tf.cond(tf.size(crowd) > 0, lambda: tf.cast(crowd, tf.bool),
                            lambda: tf.zeros_like(classes, tf.bool)),
        "boxes": {k: dense[f"image/object/bbox/{k}"] for k in ("ymin", "xmin", "ymax", "xmax")},
    }


class WindowSampler:
    """A random window of a decoded image (:func:`decode_whole`), placed as
    :class:`~helpers.train.train_input.WindowDecoder` places it, its colours jittered as there."""

    def __init__(self, window, stain_jitter: float = 0.0, crop_sampling: str = "uniform",
                 photometric_jitter: float = 0.0):
        self._window = (int(window[0]), int(window[1]))
        self._stain_jitter = float(stain_jitter)
        self._photometric_jitter = float(photometric_jitter)
        self._crop_sampling = crop_sampling

    def __call__(self, data):
        image = data["image"]
        h, w = tf.shape(image)[0], tf.shape(image)[1]
        wh, ww = tf.minimum(h, self._window[0]), tf.minimum(w, self._window[1])
        y0, x0 = window_corner(data["boxes"], h, w, wh, ww, self._crop_sampling)
        return self.window_at(data, y0, x0)

    def window_at(self, data, y0, x0):
        """The window at (y0, x0)."""
        wh, ww = self._window
        image = stain_jitter(data["image"][y0:y0 + wh, x0:x0 + ww], self._stain_jitter)
        return {
            "source_id": data["source_id"],
            "image": photometric_jitter(image, self._photometric_jitter),
            "instance_map": data["instance_map"][y0:y0 + wh, x0:x0 + ww],
            "classes": data["classes"],
            "is_crowd": data["is_crowd"],
        }


def instance_boxes(instance_map, num_objects):
    """``(ids, boxes)`` of the objects present in a label map: their numbers (sorted, 1-based) and
    tight boxes normalized by the map's size, as the decoder computes them from mask planes."""
    m = tf.cast(instance_map, tf.int32)
    h, w = tf.shape(m)[0], tf.shape(m)[1]
    labels = tf.reshape(tf.minimum(m, num_objects + 1), [-1])  # numbers above the count: ignored
    rows = tf.reshape(tf.tile(tf.range(h)[:, None], [1, w]), [-1])
    cols = tf.reshape(tf.tile(tf.range(w)[None, :], [h, 1]), [-1])
    segments = num_objects + 2
    ymin = tf.math.unsorted_segment_min(rows, labels, segments)
    ymax = tf.math.unsorted_segment_max(rows, labels, segments)
    xmin = tf.math.unsorted_segment_min(cols, labels, segments)
    xmax = tf.math.unsorted_segment_max(cols, labels, segments)
    ids = tf.cast(tf.where(ymax[1:num_objects + 1] >= 0)[:, 0], tf.int32) + 1
    fh, fw = tf.cast(h, tf.float32), tf.cast(w, tf.float32)

    def at(v):
        return tf.cast(tf.gather(v, ids), tf.float32)

    boxes = tf.stack([at(ymin) / fh, at(xmin) / fw, (at(ymax) + 1.0) / fh, (at(xmax) + 1.0) / fw], axis=-1)
    return ids, boxes


def indicator_crop_and_resize(instance_map, ids, boxes, size: int):
    """``tf.image.crop_and_resize(planes, boxes, ..., [size, size], "bilinear")`` of the 0/1 planes
    ``instance_map == id``, without the planes: each sample reads the map at its four
    neighbours. Same arithmetic as TensorFlow's kernel (samples outside the map are 0)."""
    m = tf.cast(instance_map, tf.int32)
    h, w = tf.shape(m)[0], tf.shape(m)[1]
    hm1, wm1 = tf.cast(h - 1, tf.float32), tf.cast(w - 1, tf.float32)
    grid = tf.range(size, dtype=tf.float32)
    y1, x1, y2, x2 = tf.unstack(boxes, axis=-1)

    def axis(lo, hi, extent):
        step = (hi - lo) * extent / float(size - 1)
        at = lo[:, None] * extent + grid[None, :] * step[:, None]      # [K, size]
        inside = (at >= 0.0) & (at <= extent)
        low = tf.math.floor(at)
        return (tf.cast(low, tf.int32), tf.cast(tf.math.ceil(at), tf.int32), at - low, inside)

    top, bottom, y_lerp, y_in = axis(y1, y2, hm1)
    left, right, x_lerp, x_in = axis(x1, x2, wm1)

    def value(ys, xs):
        ys = tf.clip_by_value(ys, 0, h - 1)[:, :, None]
        xs = tf.clip_by_value(xs, 0, w - 1)[:, None, :]
        flat = tf.gather(tf.reshape(m, [-1]), ys * w + xs)                # [K, size, size]
        return tf.cast(tf.equal(flat, ids[:, None, None]), tf.float32)

    xl = x_lerp[:, None, :]
    upper = value(top, left) + (value(top, right) - value(top, left)) * xl
    lower = value(bottom, left) + (value(bottom, right) - value(bottom, left)) * xl
    out = upper + (lower - upper) * y_lerp[:, :, None]
    return tf.where(y_in[:, :, None] & x_in[:, None, :], out, 0.0)


class InstanceMapParser(maskrcnn_input.Parser):
    """Model Garden's Mask R-CNN ``Parser`` whose training path reads a window's instance map
    (:class:`WindowSampler`) instead of a plane per nucleus; evaluation is Model Garden's.

    :meth:`draw` makes the random choices (flips, scale, crop offset) and :meth:`parse_drawn`
    applies them, so that a test can replay Model Garden's for the same choices."""

    def __init__(self, *args, torchvision_anchors: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self._torchvision_anchors = torchvision_anchors
        self._labeler = LocalRpnAnchorLabeler(self._rpn_match_threshold, self._rpn_unmatched_threshold,
                                              self._rpn_batch_size_per_im, self._rpn_fg_fraction)
        self._jitter = not (self._aug_scale_min == 1.0 and self._aug_scale_max == 1.0)

    def _parse_train_data(self, data):
        return self.parse_drawn(data, self.draw(tf.shape(data["image"])[0:2]))

    def draw(self, image_shape):
        """The random choices of Model Garden's training path: flips (each with probability 1/2
        when enabled), the scale jitter's scale and the crop's offset in the scaled image."""
        flip = tf.random.uniform([2]) < 0.5
        hflip = flip[0] & tf.constant(bool(self._aug_rand_hflip))
        vflip = flip[1] & tf.constant(bool(self._aug_rand_vflip))
        scale = tf.random.uniform([], self._aug_scale_min, self._aug_scale_max) if self._jitter else tf.constant(1.0)
        scaled = self._scaled_size(tf.cast(image_shape, tf.float32), scale)
        desired = tf.cast(self._output_size, tf.float32)
        offset = tf.cast(tf.maximum(scaled - desired, 0.0) * tf.random.uniform([2]), tf.int32)
        return {"hflip": hflip, "vflip": vflip, "scale": scale, "offset": offset if self._jitter else tf.zeros([2], tf.int32)}

    def _scaled_size(self, size, scale):
        """The image's size after ``resize_and_crop_image``'s scaling by ``scale`` (its formula)."""
        desired = tf.cast(self._output_size, tf.float32)
        scaled = tf.round(scale * desired) if self._jitter else desired
        return tf.round(size * tf.minimum(scaled[0] / size[0], scaled[1] / size[1]))

    def _resize_and_crop(self, image, scale, offset):
        """``preprocess_ops.resize_and_crop_image`` with its random scale and offset given."""
        size = tf.cast(tf.shape(image)[0:2], tf.float32)
        desired = self._output_size
        scaled = self._scaled_size(size, scale)
        image = tf.image.resize(image, tf.cast(scaled, tf.int32), method=tf.image.ResizeMethod.BILINEAR)
        if self._jitter:
            image = image[offset[0]:offset[0] + desired[0], offset[1]:offset[1] + desired[1], :]
        padded = preprocess_ops.compute_padded_size(desired, 2 ** self._max_level)
        image = tf.image.pad_to_bounding_box(image, 0, 0, padded[0], padded[1])
        info = tf.stack([size, tf.cast(desired, tf.float32), scaled / size, tf.cast(offset, tf.float32)])
        return image, info

    def parse_drawn(self, data, draw):
        """Model Garden's ``_parse_train_data`` for one window and the given random choices."""
        instance_map = data["instance_map"]
        image = data["image"]
        if self._augmenter is not None:
            image = self._augmenter.distort(image)
        image_shape = tf.shape(image)[0:2]
        image = preprocess_ops.normalize_image(image)
        image = tf.cond(draw["hflip"], lambda: preprocess_ops.horizontal_flip_image(image), lambda: image)
        instance_map = tf.cond(draw["hflip"], lambda: instance_map[:, ::-1], lambda: instance_map)
        image = tf.cond(draw["vflip"], lambda: tf.image.flip_up_down(image), lambda: image)
        instance_map = tf.cond(draw["vflip"], lambda: instance_map[::-1], lambda: instance_map)

        ids, boxes = instance_boxes(instance_map, tf.shape(data["classes"])[0])
        if self._skip_crowd_during_training:
            ids, boxes = (tf.boolean_mask(t, ~tf.gather(data["is_crowd"], ids - 1)) for t in (ids, boxes))
        classes = tf.gather(data["classes"], ids - 1)
        boxes = box_ops.denormalize_boxes(boxes, image_shape)
        image, image_info = self._resize_and_crop(image, draw["scale"], draw["offset"])
        image_height, image_width, _ = image.get_shape().as_list()
        image_scale, offset = image_info[2, :], image_info[3, :]
        boxes = preprocess_ops.resize_and_crop_boxes(boxes, image_scale, image_info[1, :], offset)
        keep = box_ops.get_non_empty_box_indices(boxes)
        boxes, classes, ids = tf.gather(boxes, keep), tf.gather(classes, keep), tf.gather(ids, keep)
        outer_boxes = box_ops.compute_outer_boxes(boxes, image_info[1, :], self._outer_boxes_scale)
        # the outer boxes in the window's normalized coordinates, as Model Garden's parser crops them
        cropped = outer_boxes + tf.tile(offset[None], [1, 2])
        cropped /= tf.tile(image_scale[None], [1, 2])
        cropped = box_ops.normalize_boxes(cropped, image_shape)
        masks = indicator_crop_and_resize(instance_map, ids, cropped, self._mask_crop_size)

        anchor_boxes = parser_anchors(self, (image_height, image_width))
        rpn_score_targets, rpn_box_targets = self._labeler.label_anchors(
            anchor_boxes, boxes, tf.cast(classes[:, None], tf.float32))

        pad = self._max_num_instances
        labels = {
            "anchor_boxes": anchor_boxes,
            "image_info": image_info,
            "rpn_score_targets": rpn_score_targets,
            "rpn_box_targets": rpn_box_targets,
            "gt_boxes": preprocess_ops.clip_or_pad_to_fixed_size(boxes, pad, -1),
            "gt_classes": preprocess_ops.clip_or_pad_to_fixed_size(classes, pad, -1),
            "gt_outer_boxes": preprocess_ops.clip_or_pad_to_fixed_size(outer_boxes, pad, -1),
            "gt_masks": preprocess_ops.clip_or_pad_to_fixed_size(masks, pad, -1),
        }
        return tf.cast(image, self._dtype), labels


def parser_anchors(parser: maskrcnn_input.Parser, image_size):
    """The anchors a parser labels: Model Garden's, or torchvision's when it was made with
    ``torchvision_anchors`` (:func:`helpers.train.torchvision_ops.anchor_boxes`)."""
    settings = dict(min_level=parser._min_level, max_level=parser._max_level, num_scales=parser._num_scales,
                    aspect_ratios=parser._aspect_ratios, anchor_size=parser._anchor_size)
    if getattr(parser, "_torchvision_anchors", False):
        return torchvision_ops.torchvision_anchors(settings, image_size)
    return mg_anchor.build_anchor_generator(**settings)(image_size=image_size)


class TorchvisionAnchorsParser(maskrcnn_input.Parser):
    """Model Garden's ``Parser`` (shards without an instance map) whose RPN targets are for
    torchvision's anchors: its training labels, the anchors labelled again against its boxes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._torchvision_anchors = True
        self._labeler = LocalRpnAnchorLabeler(self._rpn_match_threshold, self._rpn_unmatched_threshold,
                                              self._rpn_batch_size_per_im, self._rpn_fg_fraction)

    def _parse_train_data(self, data):
        image, labels = super()._parse_train_data(data)
        height, width, _ = image.get_shape().as_list()
        valid = labels["gt_classes"] >= 0  # padded with -1
        anchor_boxes = parser_anchors(self, (height, width))
        score, box = self._labeler.label_anchors(anchor_boxes, tf.boolean_mask(labels["gt_boxes"], valid),
                                                 tf.cast(tf.boolean_mask(labels["gt_classes"], valid)[:, None],
                                                         tf.float32))
        labels.update(anchor_boxes=anchor_boxes, rpn_score_targets=score, rpn_box_targets=box)
        return image, labels


# Decoded training images are kept in memory up to this size (image + instance map, 5 bytes a
# pixel: ~100 MB for the 20 training images of 1000 px); beyond it, e.g. many large images of
# one's own, each is decoded again every time it is drawn.
CACHE_BUDGET_BYTES = 2 * 1024 ** 3


def describe_shards(files) -> list[dict]:
    """Each shard's image size and whether it has an instance map, from its first record."""
    out = []
    for f in files:
        record = next(iter(tf.data.TFRecordDataset(str(f)))).numpy()
        feature = tf.train.Example.FromString(record).features.feature
        out.append({"file": str(f), "instance_map": has_instance_map(record),
                    "pixels": feature["image/height"].int64_list.value[0] * feature["image/width"].int64_list.value[0]})
    return out


def training_dataset(files, sampler: WindowSampler, parse_fn, batch_size: int, input_context=None,
                     seed=None, cache: bool = True, shuffle_buffer: int = 64, drop_remainder: bool = True):
    """Batches of training crops: each shard decoded once (:func:`decode_whole`, kept in memory
    when ``cache``), then a window drawn (``sampler``) and parsed (``parse_fn``) in parallel, in
    whatever order the parallel calls finish."""
    ds = tf.data.Dataset.from_tensor_slices([str(f) for f in files])
    if input_context and input_context.num_input_pipelines > 1:
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if input_context:
        batch_size = input_context.get_per_replica_batch_size(batch_size)
    if cache:
        ds = tf.data.TFRecordDataset(ds).map(decode_whole, num_parallel_calls=tf.data.AUTOTUNE).cache()
        ds = ds.repeat().shuffle(max(1, min(len(files), shuffle_buffer)), seed=seed)
    else:
        ds = ds.repeat().shuffle(shuffle_buffer, seed=seed)
        ds = tf.data.TFRecordDataset(ds).map(decode_whole, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.map(lambda d: parse_fn(sampler(d)), num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)
