"""``Detections``: the instance masks of one image (RLEs, scores, image size), the unit passed
between the prediction, evaluation, ensemble and submission helpers, as detectron2's
``structures.Instances`` is. Its masks are COCO RLE (:mod:`helpers.rle`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from helpers.rle import (DEFAULT_BATCH, RLEError, as_json_rle, check_rle, decode_crop, decode_rles, encode_crops,
                         encode_masks, rle_area, rle_bbox)


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
        self.rles = [as_json_rle(r) for r in self.rles]
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
