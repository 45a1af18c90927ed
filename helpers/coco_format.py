"""Binary masks <-> COCO RLE, and COCO result / ground-truth structures.

Everything goes through pycocotools (``pycocotools.mask.encode/decode/toBbox/area``).
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

The unit passed between the prediction, evaluation, ensemble and submission
helpers is ``Detections``: the RLEs, scores and image size of one image.
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from pycocotools import mask as mask_utils

CATEGORY_ID = 1
CATEGORY_NAME = "nucleus"
CATEGORIES = [{"id": CATEGORY_ID, "name": CATEGORY_NAME, "supercategory": CATEGORY_NAME}]
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


def _bbox_slices(batch: np.ndarray) -> list[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) of each mask in a (b, H, W) bool batch; empty -> (0, 0, 0, 0)."""
    rows = batch.any(axis=2)
    cols = batch.any(axis=1)
    out = []
    for r, c in zip(rows, cols):
        ys = np.flatnonzero(r)
        if not len(ys):
            out.append((0, 0, 0, 0))
            continue
        xs = np.flatnonzero(c)
        out.append((int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1))
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
            for m, (y0, y1, x0, x1) in zip(batch, _bbox_slices(batch)):
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
    return _jsonable(merged)


def _jsonable(rle: Mapping) -> dict:
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


# --------------------------------------------------------------------------- Detections
@dataclass
class Detections:
    """The instance masks of one image: RLEs (counts str), scores in [0, 1], image size (H, W).

    ``boxes`` ([x, y, w, h], from the RLE) and ``areas`` are computed on demand.
    ``mask_scores`` (optional, one per mask) is how sure the mask head was of each mask:
    the mean mask probability inside the mask (Mask Scoring R-CNN's point), for rescoring.
    """

    rles: list[dict]
    scores: np.ndarray
    size: tuple[int, int]
    _boxes: np.ndarray | None = field(default=None, repr=False)
    mask_scores: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self):
        self.rles = [_jsonable(r) for r in self.rles]
        self.scores = np.asarray(self.scores, np.float64).reshape(-1)
        self.size = (int(self.size[0]), int(self.size[1]))
        if len(self.rles) != len(self.scores):
            raise ValueError(f"{len(self.rles)} masks but {len(self.scores)} scores")
        if self.mask_scores is not None:
            self.mask_scores = np.asarray(self.mask_scores, np.float64).reshape(-1)
            if len(self.mask_scores) != len(self.scores):
                raise ValueError(f"{len(self.mask_scores)} mask scores for {len(self.scores)} masks")
        for r in self.rles:
            if list(r["size"]) != list(self.size):
                raise ValueError(f"mask size {r['size']} differs from the image size {list(self.size)}")

    def with_scores(self, scores, mask_scores=None) -> "Detections":
        """The same masks with new scores (and mask scores, default: kept)."""
        return Detections(self.rles, scores, self.size, self._boxes,
                          self.mask_scores if mask_scores is None else mask_scores)

    def __len__(self) -> int:
        return len(self.rles)

    @classmethod
    def empty(cls, size: Sequence[int]) -> "Detections":
        """No detections (which have every per-detection signal, mask scores included)."""
        return cls([], np.zeros((0,)), tuple(size), mask_scores=np.zeros((0,)))

    @classmethod
    def from_masks(cls, masks: np.ndarray, scores: Sequence[float],
                   batch_size: int = DEFAULT_BATCH) -> "Detections":
        masks = np.asarray(masks)
        return cls(encode_masks(masks, batch_size), scores, masks.shape[-2:])

    @classmethod
    def from_crops(cls, crops: Sequence[np.ndarray], offsets, scores: Sequence[float],
                   size: Sequence[int], batch_size: int = DEFAULT_BATCH) -> "Detections":
        return cls(encode_crops(crops, offsets, size, batch_size), scores, tuple(size))

    @classmethod
    def concat(cls, parts: Sequence["Detections"]) -> "Detections":
        if not parts:
            raise ValueError("concat needs at least one Detections")
        sizes = {p.size for p in parts}
        if len(sizes) != 1:
            raise ValueError(f"cannot concatenate detections of different image sizes: {sorted(sizes)}")
        # mask scores survive when every part that has detections carries them
        ms = (np.concatenate([np.zeros(0) if p.mask_scores is None else p.mask_scores for p in parts])
              if all(p.mask_scores is not None or not len(p) for p in parts) else None)
        return cls([r for p in parts for r in p.rles], np.concatenate([p.scores for p in parts]),
                   parts[0].size, mask_scores=ms)

    @property
    def boxes(self) -> np.ndarray:
        if self._boxes is None or len(self._boxes) != len(self):
            self._boxes = rle_bbox(self.rles)
        return self._boxes

    @property
    def areas(self) -> np.ndarray:
        return rle_area(self.rles)

    def masks(self) -> np.ndarray:
        """(N, H, W) bool; N full-size masks, so mind the memory for large N."""
        if not len(self):
            return np.zeros((0,) + self.size, bool)
        return decode_rles(self.rles)

    def subset(self, idx: Sequence[int] | np.ndarray) -> "Detections":
        idx = np.asarray(idx)
        idx = np.flatnonzero(idx) if idx.dtype == bool else idx.astype(np.int64).reshape(-1)
        return Detections([self.rles[i] for i in idx], self.scores[idx], self.size,
                          mask_scores=None if self.mask_scores is None else self.mask_scores[idx])

    def sorted(self) -> "Detections":
        """Highest score first (stable)."""
        return self.subset(np.argsort(-self.scores, kind="stable"))

    def top(self, k: int | None) -> "Detections":
        """The ``k`` highest-scoring detections (all if k is None)."""
        d = self.sorted()
        return d if k is None else d.subset(np.arange(min(k, len(d))))

    def filter(self, min_score: float = 0.0, min_area: int = 1) -> "Detections":
        keep = (self.scores >= min_score) & (self.areas >= min_area)
        return self.subset(np.flatnonzero(keep))

    def label_image(self, min_score: float = 0.0) -> np.ndarray:
        """(H, W) label image of the detections scoring at least ``min_score``: 0 background,
        1 the highest-scoring one, 2 the next...; where masks overlap the higher score owns the
        pixel (a detection wholly covered by better ones keeps no pixel). uint16, or uint32
        past 65,535 detections."""
        order = np.flatnonzero(self.scores >= min_score)
        order = order[np.argsort(-self.scores[order], kind="stable")]
        labels = np.zeros(self.size, np.uint16 if len(order) <= np.iinfo(np.uint16).max else np.uint32)
        boxes = self.boxes
        for rank in range(len(order) - 1, -1, -1):  # the lowest score first: better ones paint over
            x, y, w, h = boxes[order[rank]]
            window = (int(y), int(x), int(np.ceil(y + h)), int(np.ceil(x + w)))
            crop = decode_crop(self.rles[order[rank]], window)
            labels[window[0]:window[0] + crop.shape[0], window[1]:window[1] + crop.shape[1]][crop] = rank + 1
        return labels

    def to_json(self) -> dict:
        out = {"size": list(self.size), "scores": [float(s) for s in self.scores],
               "counts": [r["counts"] for r in self.rles]}
        if self.mask_scores is not None:
            out["mask_scores"] = [float(s) for s in self.mask_scores]
        return out

    @classmethod
    def from_json(cls, obj: Mapping, validate: bool = True) -> "Detections":
        """Inverse of ``to_json``; with ``validate`` every RLE is checked (RLEError)."""
        size = obj["size"]
        counts, scores = obj["counts"], obj["scores"]
        if len(counts) != len(scores):
            raise RLEError(f"{len(counts)} masks but {len(scores)} scores")
        rles = [{"size": list(size), "counts": c} for c in counts]
        if validate:
            for r in rles:
                check_rle(r)
        ms = obj.get("mask_scores")
        if ms is not None and len(ms) != len(scores):
            raise RLEError(f"{len(ms)} mask scores for {len(scores)} masks")
        return cls(rles, scores, size, mask_scores=ms)


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


# --------------------------------------------------------------------------- COCO structures
def result_entries(image_id: int, dets: Detections, category_id: int = CATEGORY_ID) -> list[dict]:
    """COCO result entries ``{image_id, category_id, segmentation, bbox, score}``;
    bbox comes from the RLE."""
    boxes = dets.boxes
    return [{"image_id": image_id, "category_id": int(category_id),
             "segmentation": {"size": list(r["size"]), "counts": r["counts"]},
             "bbox": [float(v) for v in box], "score": float(s)}
            for r, box, s in zip(dets.rles, boxes, dets.scores)]


def gt_dataset(images: Sequence[Mapping]) -> dict:
    """A COCO ground-truth dataset dict from ``[{"id": int, "file_name": str,
    "rles": [...], "size": (H, W)}, ...]``; annotation ids are 1..N in order."""
    coco_images, anns = [], []
    for im in images:
        h, w = (int(v) for v in im["size"])
        coco_images.append({"id": im["id"], "file_name": im.get("file_name", str(im["id"])),
                            "height": h, "width": w})
        rles = list(im.get("rles", []))
        if not rles:
            continue
        boxes, areas = rle_bbox(rles), rle_area(rles)
        for r, box, area in zip(rles, boxes, areas):
            r = _jsonable(r)
            if r["size"] != [h, w]:
                raise ValueError(f"ground-truth mask of {im.get('file_name', im['id'])} is "
                                 f"{r['size']}, image is {[h, w]}")
            anns.append({"id": len(anns) + 1, "image_id": im["id"], "category_id": CATEGORY_ID,
                         "segmentation": r, "area": float(area), "bbox": [float(v) for v in box],
                         "iscrowd": 0})
    return {"info": {"description": "nuclei ground truth"}, "images": coco_images,
            "annotations": anns, "categories": [dict(c) for c in CATEGORIES]}


def coco_from_dataset(dataset: Mapping) -> "Any":
    """A pycocotools COCO object for a dataset dict (without its console chatter)."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dict(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def load_results(coco_gt, entries: list[dict]):
    """``coco_gt.loadRes(entries)`` quietly; an empty list gives an empty result set."""
    if not entries:
        return coco_from_dataset({"images": list(coco_gt.dataset["images"]), "annotations": [],
                                  "categories": list(coco_gt.dataset["categories"])})
    with contextlib.redirect_stdout(io.StringIO()):
        return coco_gt.loadRes(entries)
