"""From ranked detections to one segmentation: which nuclei the exports and the field's metrics keep.

COCO AP ranks detections and never sees a threshold; a label image, a QuPath GeoJSON, a CSV of
measurements and the field's AJI / PQ / F1 do. A :class:`SegmentationRule` holds every cut that
shapes them:

* **the score threshold**: ``min_score``, the same for every image (``relative`` 0), or, with
  ``relative`` > 0, each image's own: ``relative`` times a high quantile (``quantile``) of the
  image's detection scores, so an image whose scores all run low (tissue unlike the training
  images) keeps its nuclei; ``min_score`` is then the highest a threshold may be;
* **overlaps**: where masks overlap the higher score owns the pixel, and a nucleus is one connected
  region: a detection keeps the largest connected piece of what is left to it, and is dropped when
  that piece is less than ``min_kept`` of its own mask (it was mostly a duplicate of better ones);
* **size**: a nucleus smaller than ``min_area`` px is dropped.

Detections are painted best first (:func:`paint`), so a detection's pixels depend only on the
detections scoring above it: the segmentation at any threshold is the painting's best-scoring
prefix (:func:`cut`), and a threshold curve paints each image once.

Notebook 04 chooses the rule on validation (:mod:`helpers.infer.thresholds`) and records it in its
choice (``predictions/choice.json``); notebooks 05 and 06 export with it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Mapping

import numpy as np

from helpers.detections import Detections
from helpers.rle import decode_crop
from helpers.errors import UserError

# A detector's own decision threshold (Mask R-CNN's box score), the rule where nothing was chosen.
DEFAULT_MIN_SCORE = 0.5
DEFAULT_MIN_KEPT = 0.5
DEFAULT_QUANTILE = 0.9


class SegmentationError(UserError, ValueError):
    """A rule that cannot be applied or read."""


@dataclass(frozen=True)
class SegmentationRule:
    """The cuts that turn an image's detections into one label image (module doc)."""

    min_score: float = DEFAULT_MIN_SCORE
    relative: float = 0.0           # 0: min_score for every image; else x the image's score quantile
    quantile: float = DEFAULT_QUANTILE
    min_kept: float = DEFAULT_MIN_KEPT
    min_area: int = 0

    def __post_init__(self):
        if not 0.0 <= self.min_score <= 1.0:
            raise SegmentationError(f"min_score {self.min_score!r}: use a score between 0 and 1")
        if self.relative < 0 or not 0.0 < self.quantile <= 1.0:
            raise SegmentationError(f"relative {self.relative!r} / quantile {self.quantile!r}: relative >= 0, "
                                    "quantile in (0, 1]")
        if not 0.0 <= self.min_kept <= 1.0 or self.min_area < 0:
            raise SegmentationError(f"min_kept {self.min_kept!r} / min_area {self.min_area!r}: min_kept in "
                                    "[0, 1], min_area >= 0")

    def threshold(self, dets: Detections) -> float:
        """The score a detection of this image needs."""
        if not self.relative:
            return self.min_score
        if not len(dets):
            return self.min_score
        reference = float(np.quantile(dets.scores, self.quantile))
        return min(self.min_score, self.relative * reference)

    def label_image(self, dets: Detections) -> tuple[np.ndarray, np.ndarray]:
        """(labels, scores): the image's label image (0 background, id k the k-th best nucleus
        kept) and each id's score (``scores[k - 1]``)."""
        return cut(*paint(dets, self.threshold(dets), self.min_kept, self.min_area), self.threshold(dets))

    def with_min_score(self, min_score: float) -> "SegmentationRule":
        """The same cuts with one threshold for every image (a user's override)."""
        return replace(self, min_score=float(min_score), relative=0.0)

    def describe(self) -> str:
        score = (f"score >= min({self.min_score:g}, {self.relative:g} x the image's "
                 f"{100 * self.quantile:g}th score percentile)" if self.relative else f"score >= {self.min_score:g}")
        return (f"{score}; a nucleus keeps its largest connected piece, dropped below "
                f"{100 * self.min_kept:g}% of its mask" + (f" or {self.min_area} px" if self.min_area else ""))

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: Mapping) -> "SegmentationRule":
        unknown = set(obj) - set(cls.__dataclass_fields__)
        if unknown:
            raise SegmentationError(f"unknown segmentation field(s) {sorted(unknown)}")
        return cls(**{k: (int(v) if k == "min_area" else float(v)) for k, v in obj.items()})


DEFAULT_RULE = SegmentationRule()


def paint(dets: Detections, min_score: float = 0.0, min_kept: float = DEFAULT_MIN_KEPT,
          min_area: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(labels, scores): the detections scoring at least ``min_score`` painted best first. Each
    keeps the largest 4-connected piece of the pixels no better one took, or is dropped when that
    piece is under ``min_kept`` of its mask or ``min_area`` px; ids 1, 2, ... follow the score, and
    ``scores[k - 1]`` is id k's."""
    from scipy import ndimage

    order = np.flatnonzero(dets.scores >= min_score)
    order = order[np.argsort(-dets.scores[order], kind="stable")]
    labels = np.zeros(dets.size, np.uint16 if len(order) <= np.iinfo(np.uint16).max else np.uint32)
    kept_scores = []
    boxes = dets.boxes
    for i in order:
        x, y, w, h = boxes[i]
        y0, x0 = int(y), int(x)
        mask = decode_crop(dets.rles[i], (y0, x0, int(np.ceil(y + h)), int(np.ceil(x + w))))
        area = int(mask.sum())
        if not area:
            continue
        window = labels[y0:y0 + mask.shape[0], x0:x0 + mask.shape[1]]
        free = mask & (window == 0)
        pieces, n = ndimage.label(free)
        if n > 1:
            sizes = np.bincount(pieces.ravel())[1:]
            free = pieces == 1 + int(np.argmax(sizes))
        kept = int(free.sum())
        if not kept or kept < min_kept * area or kept < min_area:
            continue
        kept_scores.append(dets.scores[i])
        window[free] = len(kept_scores)
    return labels, np.asarray(kept_scores, np.float64)


def cut(labels: np.ndarray, scores: np.ndarray, min_score: float) -> tuple[np.ndarray, np.ndarray]:
    """The prefix of a :func:`paint` result scoring at least ``min_score``, as (labels, scores)."""
    k = int(np.searchsorted(-scores, -min_score, side="right"))  # scores descend: ids 1..k pass
    if k == len(scores):
        return labels, scores
    out = labels.copy()
    out[out > k] = 0
    return out, scores[:k]
