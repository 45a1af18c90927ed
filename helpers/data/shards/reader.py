"""Reading a shard: its one record, decoded by Model Garden's decoder or from the instance map.

``read_shard(path)`` decodes with Model Garden's ``TfExampleDecoder(include_mask=True)`` (proof
that Model Garden can read it); ``read_shard(path, fast=True)`` takes the masks from
``nuclei/instance_map`` (``INSTANCE_MAP_KEY``: a 16-bit PNG, pixel = object number, 1-based,
0 = background), the same bits much faster, or from the per-instance PNGs without it.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from helpers.atomic import is_partial
from helpers.data.shards.index import ShardError
from helpers.image_codec import decode_image

INSTANCE_MAP_KEY = "nuclei/instance_map"

_DECODER = None


def _mg_decoder():
    global _DECODER
    if _DECODER is None:
        from official.vision.dataloaders.tf_example_decoder import TfExampleDecoder
        _DECODER = TfExampleDecoder(include_mask=True)
    return _DECODER


def read_records(path: Path, _own_temp: bool = False) -> list[bytes]:
    """Every record of a shard file (never a temp file of an interrupted run, but the writer's own)."""
    import tensorflow as tf

    if is_partial(path) and not _own_temp:
        raise ShardError(f"{path} is a temp file of an interrupted run; never read it: re-run write_shards")
    return [r.numpy() for r in tf.data.TFRecordDataset(str(path))]


def _parse_extra(record: bytes) -> dict:
    import tensorflow as tf

    ex = tf.train.Example.FromString(record)
    f = ex.features.feature
    out = {"image_id": f["image/filename"].bytes_list.value[0].decode(),
           "instance_map_png": f[INSTANCE_MAP_KEY].bytes_list.value[0] if INSTANCE_MAP_KEY in f else None}
    return out


def example_boxes(feature, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """``(normalized, pixel)`` boxes (N, 4) ymin, xmin, ymax, xmax of a ``tf.train.Example``'s
    ``features.feature``; pixel boxes are rounded float32."""
    bn = np.stack([np.array(feature[f"image/object/bbox/{k}"].float_list.value, np.float32)
                   for k in ("ymin", "xmin", "ymax", "xmax")], axis=-1).reshape(-1, 4)
    return bn, (bn * np.array([height, width, height, width], np.float32)).round()


def masks_from_instance_map(labels: np.ndarray, boxes_px: np.ndarray) -> np.ndarray:
    """(N,H,W) bool masks from a label map and pixel boxes (ymin,xmin,ymax,xmax)."""
    n = len(boxes_px)
    out = np.zeros((n, *labels.shape), dtype=bool)
    for i, (y0, x0, y1, x1) in enumerate(np.asarray(boxes_px, dtype=np.int64)):
        out[i, y0:y1, x0:x1] = labels[y0:y1, x0:x1] == i + 1
    return out


def read_shard(path: str | os.PathLike, fast: bool = False) -> dict:
    """Decode a one-image shard.

    Default: with Model Garden's ``TfExampleDecoder(include_mask=True)`` (proof that
    Model Garden can read it). ``fast=True``: masks from ``nuclei/instance_map``
    (same bits, much faster; falls back to the per-instance PNGs without it).
    Returns numpy: image (H,W,3 uint8), masks (N,H,W bool), boxes (N,4 float32
    pixels ymin,xmin,ymax,xmax), boxes_normalized, classes, areas, is_crowd,
    source_id (str), image_id (str).
    """
    path = Path(path)
    recs = read_records(path)
    if len(recs) != 1:
        raise ShardError(f"{path} holds {len(recs)} records, expected 1; re-run write_shards")
    extra = _parse_extra(recs[0])
    if not fast:
        import tensorflow as tf

        d = _mg_decoder().decode(tf.constant(recs[0]))
        h, w = int(d["height"]), int(d["width"])
        bn = d["groundtruth_boxes"].numpy()
        masks = d["groundtruth_instance_masks"].numpy()
        if masks.size and not np.isin(masks, (0.0, 1.0)).all():
            raise ShardError(f"{path}: mask values are not 0/1")
        return {"image": d["image"].numpy(), "masks": masks.astype(bool), "boxes_normalized": bn,
                "boxes": (bn * np.array([h, w, h, w], np.float32)).round().astype(np.float32),
                "classes": d["groundtruth_classes"].numpy(), "areas": d["groundtruth_area"].numpy(),
                "is_crowd": d["groundtruth_is_crowd"].numpy(),
                "source_id": d["source_id"].numpy().decode(), "image_id": extra["image_id"]}
    import tensorflow as tf

    ex = tf.train.Example.FromString(recs[0]).features.feature
    h, w = ex["image/height"].int64_list.value[0], ex["image/width"].int64_list.value[0]
    bn, boxes = example_boxes(ex, h, w)
    if extra["instance_map_png"] is not None:
        masks = masks_from_instance_map(decode_image(extra["instance_map_png"]), boxes)
    else:
        pngs = ex["image/object/mask"].bytes_list.value
        masks = np.zeros((len(pngs), h, w), bool)
        for i, b in enumerate(pngs):
            masks[i] = decode_image(b) > 0
    return {"image": decode_image(ex["image/encoded"].bytes_list.value[0]), "masks": masks,
            "boxes": boxes.astype(np.float32), "boxes_normalized": bn,
            "classes": np.array(ex["image/object/class/label"].int64_list.value),
            "areas": np.array(ex["image/object/area"].float_list.value, np.float32),
            "is_crowd": np.array(ex["image/object/is_crowd"].int64_list.value).astype(bool),
            "source_id": ex["image/source_id"].bytes_list.value[0].decode(), "image_id": extra["image_id"]}
