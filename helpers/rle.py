"""Binary masks <-> COCO RLE, through pycocotools (``pycocotools.mask.encode/decode/toBbox/area``).

RLEs are kept as JSON-ready dicts ``{"size": [h, w], "counts": str}``; pycocotools
accepts ``str`` counts directly.

Speed: ``mask.encode`` on full 1000x1000 masks needs a Fortran-ordered copy of
each and scans every pixel, although a nucleus covers a few hundred. We find each
mask's bounding box, take the run lengths of its full-height column band only
(the zero columns around it just extend the first and last run) and let
pycocotools compress them (``frPyObjects``); the strings are identical to
``mask.encode``'s. ``encode_crops`` does the same for masks known only inside a
box (what Model Garden gives after pasting), so a prediction never needs N
full-size masks in memory.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from helpers.image_codec import mask_boxes

DEFAULT_BATCH = 256


class RLEError(ValueError):
    """An RLE dict that is not valid COCO RLE for its size."""


# --------------------------------------------------------------------------- encode
def _band_runs(crop: np.ndarray, y0: int, x0: int, height: int, width: int) -> list[int]:
    """Uncompressed COCO run lengths (column-major, zeros first) of an image that is
    zero except for ``crop`` at (y0, x0). Only the crop's full-height column band is
    scanned; the zero columns left and right are added to the first and last run."""
    h, w = crop.shape
    if h == 0 or w == 0 or not crop.any():
        return [height * width]
    band = np.zeros((w, height), np.uint8)  # C-order (w, H) == column-major (H, w)
    band[:, y0:y0 + h] = crop.T
    flat = band.ravel()
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate(([0], change, [flat.size])))
    if flat[0]:
        runs = np.concatenate(([0], runs))
    runs[0] += x0 * height
    tail = (width - x0 - w) * height
    if tail:
        if len(runs) % 2:  # last run is zeros
            runs[-1] += tail
        else:
            runs = np.append(runs, tail)
    return runs.tolist()


def _encode_pieces(pieces: Iterable[tuple[np.ndarray, int, int]], size: Sequence[int],
                   batch_size: int) -> list[dict]:
    """Encode masks given as (crop, y0, x0) pieces already clipped to the image.

    Run lengths come from each crop's column band (``_band_runs``); pycocotools
    (``frPyObjects`` on uncompressed RLE) turns them into the compressed string, so
    the result is exactly ``mask.encode``'s (the tests check this).
    """
    height, width = int(size[0]), int(size[1])
    batch_size = max(1, int(batch_size))
    out: list[dict] = []
    objs: list[dict] = []

    def flush():
        if objs:
            for rle in mask_utils.frPyObjects(objs, height, width):
                out.append({"size": [height, width], "counts": rle["counts"].decode("ascii")})
            objs.clear()

    for crop, y0, x0 in pieces:
        objs.append({"size": [height, width], "counts": _band_runs(crop, y0, x0, height, width)})
        if len(objs) >= batch_size:
            flush()
    flush()
    return out


def encode_masks(masks: np.ndarray | Sequence[np.ndarray], batch_size: int = DEFAULT_BATCH) -> list[dict]:
    """RLEs (``counts`` as str) of binary masks: an (N, H, W) array or a sequence of (H, W)."""
    if isinstance(masks, np.ndarray):
        if masks.ndim == 2:
            masks = masks[None]
        if masks.ndim != 3:
            raise ValueError(f"masks must be (N, H, W) or (H, W); got shape {masks.shape}")
        n, height, width = masks.shape
        get = lambda s, e: masks[s:e] != 0 if masks.dtype != bool else masks[s:e]  # noqa: E731
    else:
        masks = list(masks)
        if not masks:
            return []
        n = len(masks)
        height, width = np.asarray(masks[0]).shape
        get = lambda s, e: np.stack([np.asarray(m) != 0 for m in masks[s:e]])  # noqa: E731

    def pieces():
        for s in range(0, n, 256):
            batch = get(s, min(n, s + 256))
            if batch.shape[1:] != (height, width):
                raise ValueError(f"all masks must be {height}x{width}; got {batch.shape[1:]}")
            for m, (y0, x0, y1, x1) in zip(batch, mask_boxes(batch)):
                yield m[y0:y1, x0:x1].view(np.uint8), y0, x0

    return _encode_pieces(pieces(), (height, width), batch_size)


def encode_crops(crops: Sequence[np.ndarray], offsets: Sequence[Sequence[int]] | np.ndarray,
                 size: Sequence[int], batch_size: int = DEFAULT_BATCH) -> list[dict]:
    """RLEs of masks given only inside a box: ``crops[i]`` (h, w) binary placed with its
    top-left corner at ``offsets[i] = (y0, x0)`` in an image of ``size = (H, W)``.

    Parts falling outside the image are clipped. Use this to paste Model Garden's
    box-relative masks (already resized to their box) without full-size masks.
    """
    height, width = int(size[0]), int(size[1])
    if len(crops) != len(offsets):
        raise ValueError(f"{len(crops)} crops but {len(offsets)} offsets")

    def pieces():
        for crop, (y0, x0) in zip(crops, offsets):
            crop = np.asarray(crop)
            if crop.ndim != 2:
                raise ValueError(f"each crop must be 2-D; got shape {crop.shape}")
            y0, x0 = int(y0), int(x0)
            cy0, cx0 = max(0, -y0), max(0, -x0)
            cy1 = max(cy0, min(crop.shape[0], height - y0))
            cx1 = max(cx0, min(crop.shape[1], width - x0))
            part = crop[cy0:cy1, cx0:cx1]
            part = part.view(np.uint8) if part.dtype == bool else (part != 0).astype(np.uint8)
            yield part, max(0, y0), max(0, x0)

    return _encode_pieces(pieces(), (height, width), batch_size)


# --------------------------------------------------------------------------- decode / measure
def decode_rle(rle: Mapping) -> np.ndarray:
    """(H, W) bool mask of one RLE."""
    return mask_utils.decode(dict(rle)).astype(bool)


def decode_rles(rles: Sequence[Mapping]) -> np.ndarray:
    """(N, H, W) bool masks (N may be 0 -> shape (0, 0, 0))."""
    if not len(rles):
        return np.zeros((0, 0, 0), bool)
    return np.ascontiguousarray(mask_utils.decode([dict(r) for r in rles]).transpose(2, 0, 1)).astype(bool)


def decode_crop(rle: Mapping, window: Sequence[int]) -> np.ndarray:
    """The part of an RLE mask inside ``window = (y0, x0, y1, x1)``, as bool (y1-y0, x1-x0),
    without decoding the full image (pycocotools has no windowed decode; this reads the
    runs with ``rle_runs``). Equals ``decode_rle(rle)[y0:y1, x0:x1]``."""
    height, width = int(rle["size"][0]), int(rle["size"][1])
    y0, x0, y1, x1 = (int(v) for v in window)
    y0, x0, y1, x1 = max(0, y0), max(0, x0), min(height, y1), min(width, x1)
    if y1 <= y0 or x1 <= x0:
        return np.zeros((max(0, y1 - y0), max(0, x1 - x0)), bool)
    counts = rle["counts"]
    runs = np.asarray(rle_runs(counts if isinstance(counts, str) else counts.decode("ascii")), np.int64)
    ends = np.cumsum(runs)
    starts = ends - runs
    lo, hi = x0 * height, x1 * height
    s = np.clip(starts[1::2], lo, hi) - lo  # runs of ones are the odd runs
    e = np.clip(ends[1::2], lo, hi) - lo
    keep = e > s
    delta = np.zeros(hi - lo + 1, np.int32)
    np.add.at(delta, s[keep], 1)
    np.add.at(delta, e[keep], -1)
    band = np.cumsum(delta[:-1]).astype(bool).reshape(x1 - x0, height).T
    return band[y0:y1]


def rle_bbox(rles: Sequence[Mapping]) -> np.ndarray:
    """(N, 4) float boxes [x, y, w, h] from the RLEs (pycocotools ``toBbox``)."""
    if not len(rles):
        return np.zeros((0, 4), np.float64)
    return np.asarray(mask_utils.toBbox([dict(r) for r in rles]), np.float64).reshape(-1, 4)


def rle_area(rles: Sequence[Mapping]) -> np.ndarray:
    """(N,) pixel areas of the RLEs."""
    if not len(rles):
        return np.zeros((0,), np.int64)
    # pycocotools 2.0.11 + numpy 2: area() of more than 255 RLEs raises OverflowError
    # (it sizes its output with a uint8), so call it in chunks of 255.
    rles = [dict(r) for r in rles]
    return np.concatenate([np.asarray(mask_utils.area(rles[s:s + 255]), np.int64).reshape(-1)
                           for s in range(0, len(rles), 255)])


def rle_iou(a: Sequence[Mapping], b: Sequence[Mapping]) -> np.ndarray:
    """(len(a), len(b)) mask IoU; pycocotools skips pairs whose boxes do not overlap."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)), np.float64)
    iou = mask_utils.iou([dict(r) for r in a], [dict(r) for r in b], [0] * len(b))
    return np.asarray(iou, np.float64).reshape(len(a), len(b))


def rle_union(rles: Sequence[Mapping]) -> dict:
    merged = mask_utils.merge([dict(r) for r in rles], intersect=0)
    return as_json_rle(merged)


def as_json_rle(rle: Mapping) -> dict:
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": counts}


def rle_runs(counts: str) -> list[int]:
    """Run lengths of a compressed COCO counts string (mirror of pycocotools' rleFrString).

    Only for validation: pycocotools' decoder does not check that the runs add up to
    h*w, and writes past the mask when they do not.
    """
    runs: list[int] = []
    p, n = 0, len(counts)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise RLEError("counts string ends in the middle of a number")
            c = ord(counts[p]) - 48
            if c < 0 or c > 63:
                raise RLEError(f"counts has a character outside the RLE alphabet: {counts[p]!r}")
            x |= (c & 0x1f) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    return runs


def check_rle(rle: Any, size: Sequence[int] | None = None) -> None:
    """Raise RLEError unless ``rle`` is ``{"size": [h, w], "counts": str}`` whose runs
    are non-negative and add up to h*w (and, if given, size matches)."""
    if not isinstance(rle, Mapping) or "size" not in rle or "counts" not in rle:
        raise RLEError(f"segmentation must be a dict with 'size' and 'counts'; got {str(rle)[:80]}")
    sz = rle["size"]
    if (not isinstance(sz, (list, tuple)) or len(sz) != 2
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in sz)):
        raise RLEError(f"segmentation size must be [height, width] positive ints; got {sz!r}")
    if size is not None and [int(sz[0]), int(sz[1])] != [int(size[0]), int(size[1])]:
        raise RLEError(f"segmentation size {list(sz)} does not match the image size {list(size)}")
    counts = rle["counts"]
    if not isinstance(counts, str):
        raise RLEError(f"segmentation counts must be a str (compressed RLE); got {type(counts).__name__}")
    runs = rle_runs(counts)
    if any(r < 0 for r in runs):
        raise RLEError("segmentation counts decode to a negative run length")
    total = int(sz[0]) * int(sz[1])
    if sum(runs) != total:
        raise RLEError(f"segmentation counts cover {sum(runs)} pixels, expected h*w = {total}")
