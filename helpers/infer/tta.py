"""Test-time augmentation geometry: where an image's views lie.

* ``augment_image(image, name)`` - the image as the model sees it under a flip or a
  90-degree rotation (``TTA_OPS``); ``invert_tta(dets, name)`` maps the detections
  predicted on that view back onto the image (``transform_detections`` applies one).
  ``ZOOMS`` are multi-scale views: ``zoom_of(name)`` enlarges the model's input.

Fusing the views is :mod:`helpers.infer.fusion`'s work (``merge_detections``); a large image's
tiles are :mod:`helpers.infer.tiling`'s.
"""
from __future__ import annotations

import numpy as np

from helpers.errors import InvalidRequest
from helpers.detections import Detections
from helpers.rle import decode_crop, encode_crops

TTA_OPS = ("hflip", "vflip", "rot90", "rot180", "rot270")
_INVERSE = {"hflip": "hflip", "vflip": "vflip", "rot90": "rot270", "rot180": "rot180", "rot270": "rot90"}
# Multi-scale views (zoom125 = 125%): the model sees the image enlarged by this factor (on top of the stage's own
# input scale) and its boxes and masks come back in image pixels, so there is no geometry to undo.
# Training crops are enlarged by 1.0-1.25 (Profile.scale_jitter), so 1.25 stays in what it saw.
ZOOMS = {"zoom125": 1.25, "zoom150": 1.5}
TTA_SUFFIX = "+tta"  # model "<name>+tta": model <name>'s plain and augmented predictions fused


def base_model(name: str) -> str:
    """The model a comparison's name stands for: ``all`` for ``all+tta``."""
    return name[: -len(TTA_SUFFIX)] if name.endswith(TTA_SUFFIX) else name


def zoom_of(name: str | None) -> float:
    """The enlargement of view ``name`` (1.0 for the original and the geometric ones)."""
    return ZOOMS.get(name or "", 1.0)


def _check_op(name: str) -> None:
    if name not in TTA_OPS:
        raise InvalidRequest(f"unknown augmentation {name!r}; use one of {TTA_OPS}")


def augment_image(image: np.ndarray, name: str) -> np.ndarray:
    """The image as the model sees it under augmentation ``name`` (H, W[, C])."""
    _check_op(name)
    if name == "hflip":
        return np.ascontiguousarray(image[:, ::-1])
    if name == "vflip":
        return np.ascontiguousarray(image[::-1])
    k = {"rot90": 1, "rot180": 2, "rot270": 3}[name]
    return np.ascontiguousarray(np.rot90(image, k, axes=(0, 1)))


def transform_detections(dets: Detections, name: str) -> Detections:
    """Apply augmentation ``name`` (as ``augment_image``) to every mask of ``dets``."""
    _check_op(name)
    h, w = dets.size
    out_size = (w, h) if name in ("rot90", "rot270") else (h, w)
    crops, offsets = [], []
    for rle, (bx, by, bw, bh) in zip(dets.rles, dets.boxes.astype(int)):
        crop = decode_crop(rle, (by, bx, by + bh, bx + bw))
        if name == "hflip":
            crops.append(crop[:, ::-1]); offsets.append((by, w - bx - bw))  # noqa: E702
        elif name == "vflip":
            crops.append(crop[::-1]); offsets.append((h - by - bh, bx))  # noqa: E702
        elif name == "rot180":
            crops.append(crop[::-1, ::-1]); offsets.append((h - by - bh, w - bx - bw))  # noqa: E702
        elif name == "rot90":  # np.rot90: (r, c) -> (W-1-c, r)
            crops.append(np.rot90(crop, 1)); offsets.append((w - bx - bw, by))  # noqa: E702
        else:  # rot270: (r, c) -> (c, H-1-r)
            crops.append(np.rot90(crop, 3)); offsets.append((bx, h - by - bh))  # noqa: E702
    return Detections(encode_crops(crops, offsets, out_size), dets.scores, out_size,
                      mask_scores=dets.mask_scores)


def invert_tta(dets: Detections, name: str) -> Detections:
    """Detections predicted on ``augment_image(image, name)`` mapped back onto ``image``."""
    _check_op(name)
    return transform_detections(dets, _INVERSE[name])


