"""Training input for dense nuclei: decode only a crop-sized window of each image.

Model Garden's ``TfExampleDecoder`` turns every instance mask of an example into
a full-image float32 plane before the parser crops anything. A 1000x1000 H&E
image with ~1,900 nuclei is then 1,900 x 1e6 x 4 B = 7.6 GB per copy, and the
parser makes several copies (gather, flips): we measured 16 GB RSS and ~7 s per
example on synthetic 1000 px images with ~450 nuclei (cpu profile).

:class:`WindowDecoder` returns exactly what ``TfExampleDecoder(include_mask=True)``
returns (same keys, same conventions), but for a random window of the image of
the training crop's size, at native resolution: image, masks (from the shard's
16-bit instance map when present, one PNG decode; else each mask PNG decoded and
cropped before the float conversion), tight boxes of the visible parts, areas.
Model Garden's own ``maskrcnn_input.Parser`` then does everything else (flips,
scale jitter, its crop, anchors, targets) unchanged.

:class:`~helpers.train.tasks.nuclei_maskrcnn.NucleiMaskRCNNTask` reads training data through it.
"""
from __future__ import annotations

import tensorflow as tf
from official.core import input_reader as core_input_reader
from official.vision.dataloaders import tf_example_decoder

from helpers.data.shards import INSTANCE_MAP_KEY  # written by helpers.data.shards (pixel = object number)
from helpers.stain import HED_FROM_RGB, RGB_FROM_HED  # Ruifrok & Johnston's stain matrix
from helpers.train.config import CROP_SAMPLINGS


def rgb_to_hed(rgb):
    """Stain optical densities (..., 3: haematoxylin, eosin, DAB) of float RGB in [0, 1]."""
    od = -tf.math.log(tf.maximum(rgb, 1e-6))
    return tf.tensordot(od, tf.constant(HED_FROM_RGB, tf.float32), 1)


def hed_to_rgb(hed):
    """Inverse of :func:`rgb_to_hed`, clipped to [0, 1]."""
    return tf.clip_by_value(tf.exp(-tf.tensordot(hed, tf.constant(RGB_FROM_HED, tf.float32), 1)),
                            0.0, 1.0)


def stain_jitter(image, strength: float, seed=None):
    """H&E stain augmentation (Tellez et al. 2019): each HED channel s becomes a*s + b with
    a ~ U(1-strength, 1+strength), b ~ U(-strength, strength). uint8 (H, W, 3) in and out;
    pixels move in colour only, never in place."""
    if not strength:
        return image
    hed = rgb_to_hed(tf.cast(image, tf.float32) / 255.0)
    a = tf.random.uniform([3], 1.0 - strength, 1.0 + strength, seed=seed)
    b = tf.random.uniform([3], -strength, strength, seed=seed)
    rgb = hed_to_rgb(hed * a + b)
    return tf.cast(tf.round(rgb * 255.0), tf.uint8)


# HoVer-Net's input augmentation (Graham et al. 2019; vqdang/hover_net dataloader/augs.py with
# imgaug), at photometric_jitter = 1: hue +-8 of OpenCV's 180 (+-0.044 of the circle), saturation
# x (1 +- 0.2), brightness +-26 of 255, contrast x (0.75..1.25); then one of a Gaussian blur
# (kernels up to 5 px: sigma up to 1.1) or Gaussian noise (sigma up to 0.05).
PHOTOMETRIC_RANGES = {"hue": 0.044, "saturation": 0.2, "brightness": 26 / 255, "contrast": 0.25,
                      "blur_sigma": 1.1, "noise": 0.05}
BLUR_LEVELS = 4  # the blur's sigma: blur_sigma x 1/4, 2/4, 3/4 or 1


def photometric_jitter(image, strength: float, seed=None):
    """Colour and blur augmentation of a uint8 (H, W, 3) crop, HoVer-Net's ranges
    (:data:`PHOTOMETRIC_RANGES`) times ``strength``; pixels move in colour and sharpness only.
    The blur is Model Garden's ``augment.gaussian_filter2d``."""
    if not strength:
        return image
    from official.vision.ops import augment

    r = {k: v * strength for k, v in PHOTOMETRIC_RANGES.items()}

    def uniform(lo, hi):
        return tf.random.uniform([], lo, hi, seed=seed)

    x = tf.cast(image, tf.float32) / 255.0
    x = tf.image.adjust_hue(x, uniform(-r["hue"], r["hue"]))
    x = tf.image.adjust_saturation(x, uniform(1.0 - r["saturation"], 1.0 + r["saturation"]))
    x = tf.image.adjust_brightness(x, uniform(-r["brightness"], r["brightness"]))
    x = tf.image.adjust_contrast(x, uniform(1.0 - r["contrast"], 1.0 + r["contrast"]))
    x = tf.clip_by_value(x, 0.0, 1.0)
    # gaussian_filter2d checks its sigma in Python, so a blur is one of BLUR_LEVELS fixed sigmas
    sigmas = [r["blur_sigma"] * (k + 1) / BLUR_LEVELS for k in range(BLUR_LEVELS)]
    level = tf.random.uniform([], 0, BLUR_LEVELS, dtype=tf.int32, seed=seed)
    blurred = lambda: tf.switch_case(level, [  # noqa: E731
        (lambda s=s: augment.gaussian_filter2d(x, filter_shape=5, sigma=s)) for s in sigmas])
    x = tf.cond(uniform(0.0, 1.0) < 0.5, blurred,
                lambda: x + tf.random.normal(tf.shape(x), stddev=uniform(0.0, r["noise"]), seed=seed))
    return tf.cast(tf.round(tf.clip_by_value(x, 0.0, 1.0) * 255.0), tf.uint8)


class WindowDecoder(tf_example_decoder.TfExampleDecoder):
    """``TfExampleDecoder`` that decodes one random ``window`` (h, w) of each example, placed
    by ``crop_sampling`` (:func:`window_corner`), its colours jittered by :func:`stain_jitter`
    when ``stain_jitter`` > 0, then by :func:`photometric_jitter` when ``photometric_jitter`` > 0."""

    def __init__(self, window, stain_jitter: float = 0.0, crop_sampling: str = "uniform",
                 photometric_jitter: float = 0.0, **kwargs):
        super().__init__(include_mask=True, **kwargs)
        if crop_sampling not in CROP_SAMPLINGS:
            raise ValueError(f"crop_sampling {crop_sampling!r}: use one of {CROP_SAMPLINGS}")
        self._window = (int(window[0]), int(window[1]))
        self._stain_jitter = float(stain_jitter)
        self._photometric_jitter = float(photometric_jitter)
        self._crop_sampling = crop_sampling
        self._keys_to_features[INSTANCE_MAP_KEY] = tf.io.FixedLenFeature((), tf.string, default_value="")

    def decode(self, serialized_example):
        parsed = self.parse(serialized_example)
        image = self._decode_image(parsed)
        h, w = tf.shape(image)[0], tf.shape(image)[1]
        wh, ww = tf.minimum(h, self._window[0]), tf.minimum(w, self._window[1])
        y0, x0 = window_corner({k: parsed[f"image/object/bbox/{k}"] for k in ("ymin", "xmin", "ymax", "xmax")},
                               h, w, wh, ww, self._crop_sampling)
        return self.decode_window(parsed, image, y0, x0)

    def parse(self, serialized_example):
        """The record's features, sparse ones made dense."""
        parsed = tf.io.parse_single_example(serialized=serialized_example,
                                            features=self._keys_to_features)
        for k in parsed:
            if isinstance(parsed[k], tf.SparseTensor):
                parsed[k] = tf.sparse.to_dense(parsed[k], default_value="" if parsed[k].dtype == tf.string else 0)
        return parsed

    def decode_window(self, parsed, image, y0, x0):
        """What ``TfExampleDecoder`` returns, for the window at (y0, x0) of the parsed record and
        its decoded image."""
        h, w = tf.shape(image)[0], tf.shape(image)[1]
        wh, ww = tf.minimum(h, self._window[0]), tf.minimum(w, self._window[1])
        image = stain_jitter(image[y0:y0 + wh, x0:x0 + ww], self._stain_jitter)
        image = photometric_jitter(image, self._photometric_jitter)

        classes = parsed["image/object/class/label"]
        pngs = parsed["image/object/mask"]
        n = tf.shape(classes)[0]
        imap = parsed[INSTANCE_MAP_KEY]

        def from_map():
            m = tf.io.decode_png(imap, channels=1, dtype=tf.uint16)[y0:y0 + wh, x0:x0 + ww, 0]
            m = tf.cast(m, tf.int32)
            ids = tf.sort(tf.unique(tf.reshape(m, [-1]))[0])
            ids = ids[(ids > 0) & (ids <= n)]
            return tf.equal(m[None], ids[:, None, None]), ids - 1

        def from_pngs():
            def one(png):
                return tf.io.decode_png(png, channels=1, dtype=tf.uint8)[y0:y0 + wh, x0:x0 + ww, 0] > 0

            masks = tf.cond(
                n > 0,
                lambda: tf.map_fn(one, pngs, fn_output_signature=tf.TensorSpec([None, None], tf.bool)),
                lambda: tf.zeros([0, wh, ww], tf.bool))
            keep = tf.reduce_any(masks, axis=[1, 2])
            return tf.boolean_mask(masks, keep), tf.cast(tf.where(keep)[:, 0], tf.int32)

        masks, idx = tf.cond(tf.strings.length(imap) > 0, from_map, from_pngs)
        masks = tf.ensure_shape(masks, [None, None, None])
        masks_f = tf.cast(masks, tf.float32)
        is_crowd = tf.cond(tf.shape(parsed["image/object/is_crowd"])[0] > 0,
                           lambda: tf.cast(parsed["image/object/is_crowd"], tf.bool),
                           lambda: tf.zeros_like(classes, dtype=tf.bool))
        return {
            "source_id": parsed["image/source_id"],
            "image": image,
            "height": tf.cast(wh, tf.int64),
            "width": tf.cast(ww, tf.int64),
            "groundtruth_classes": tf.gather(classes, idx),
            "groundtruth_is_crowd": tf.gather(is_crowd, idx),
            "groundtruth_area": tf.reduce_sum(masks_f, axis=[1, 2]),
            "groundtruth_boxes": tight_boxes(masks),
            "groundtruth_instance_masks": masks_f,
            "groundtruth_instance_masks_png": tf.gather(pngs, idx),
        }


def tight_boxes(masks):
    """Normalized (ymin, xmin, ymax, xmax) of each bool mask plane [k, h, w], ends exclusive."""
    rows = tf.reduce_any(masks, axis=2)  # [k, h]
    cols = tf.reduce_any(masks, axis=1)  # [k, w]
    fh, fw = tf.cast(tf.shape(masks)[1], tf.float32), tf.cast(tf.shape(masks)[2], tf.float32)
    ymin = tf.cast(tf.argmax(tf.cast(rows, tf.int32), axis=1), tf.float32)
    ymax = fh - tf.cast(tf.argmax(tf.cast(tf.reverse(rows, [1]), tf.int32), axis=1), tf.float32)
    xmin = tf.cast(tf.argmax(tf.cast(cols, tf.int32), axis=1), tf.float32)
    xmax = fw - tf.cast(tf.argmax(tf.cast(tf.reverse(cols, [1]), tf.int32), axis=1), tf.float32)
    return tf.stack([ymin / fh, xmin / fw, ymax / fh, xmax / fw], axis=-1)


def window_corner(boxes: dict, h, w, wh, ww, crop_sampling: str = "uniform"):
    """Top-left corner of a (wh, ww) window of an (h, w) image. "uniform": anywhere in the image.
    "nuclei": centred on a random nucleus (the centre of one of ``boxes``, normalized ymin, xmin,
    ymax, xmax vectors), shifted by up to a quarter window, so a region is drawn as often as it
    holds nuclei: crowded tissue more, empty stroma less. An image without nuclei falls back to
    uniform."""
    def uniform():
        return (tf.random.uniform([], 0, h - wh + 1, dtype=tf.int32),
                tf.random.uniform([], 0, w - ww + 1, dtype=tf.int32))

    if crop_sampling == "uniform":
        return uniform()
    box = {k: tf.cast(boxes[k], tf.float32) for k in ("ymin", "xmin", "ymax", "xmax")}
    n = tf.shape(box["ymin"])[0]

    def on_a_nucleus():
        i = tf.random.uniform([], 0, n, dtype=tf.int32)

        def corner(lo, hi, side, win):
            centre = (lo[i] + hi[i]) / 2 * tf.cast(side, tf.float32)
            shift = tf.random.uniform([], -0.25, 0.25) * tf.cast(win, tf.float32)
            start = tf.cast(tf.round(centre + shift), tf.int32) - win // 2
            return tf.clip_by_value(start, 0, side - win)

        return corner(box["ymin"], box["ymax"], h, wh), corner(box["xmin"], box["xmax"], w, ww)

    return tf.cond(n > 0, on_a_nucleus, uniform)


class ListedFilesReader(core_input_reader.InputReader):
    """Model Garden's ``InputReader`` (what ``input_reader_factory`` makes for us), reading
    ``input_path`` as the list of shard files it is. Its ``match_files`` splits every path on
    commas, so a workspace such as ``/content/hw3, v2`` would become two paths that do not exist;
    ``get_files`` is the override point Model Garden documents."""

    def get_files(self, input_path):
        files = [input_path] if isinstance(input_path, str) else input_path
        if not isinstance(files, (list, tuple)) or any(not isinstance(f, str) or "*" in f or "?" in f
                                                       for f in files):
            return super().get_files(input_path)  # patterns, or a dict of datasets: Model Garden's way
        missing = [f for f in files if not tf.io.gfile.exists(f)]
        if missing:
            raise FileNotFoundError(f"shard(s) {missing[:3]} not found; run notebook 01 again to rewrite them")
        return list(files)
