"""Fuse detections of several models and/or augmentations of one image by mask IoU.

``merge_detections(parts, method="nms" | "wmf", iou_threshold)``: ``nms`` keeps the
best-scoring mask of each cluster; ``wmf`` (weighted mask fusion) votes pixels with the
members' scores as weights and rescales the score by how many sources found the nucleus
(like weighted box fusion). Joining a large image's tiles is :mod:`helpers.infer.tiling`'s work.

Mask IoU comes from pycocotools ``mask.iou`` on RLEs (it skips pairs whose boxes do not
overlap), in row chunks so memory stays bounded.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from pycocotools import mask as mask_utils

from helpers.errors import InvalidRequest
from helpers.detections import Detections
from helpers.rle import decode_crop, encode_crops, rle_iou

MERGE_METHODS = ("nms", "wmf")
_CHUNK = 1024


def _clusters(rles: Sequence[dict], iou_threshold: float) -> list[list[int]]:
    """Greedy clustering of score-sorted masks: each unassigned mask, in order, takes
    every later unassigned mask with IoU > threshold."""
    n = len(rles)
    assigned = np.zeros(n, bool)
    clusters: list[list[int]] = []
    for s in range(0, n, _CHUNK):
        e = min(n, s + _CHUNK)
        iou = rle_iou(rles[s:e], rles[s:])  # rows s..e-1, columns s..n-1
        for i in range(s, e):
            if assigned[i]:
                continue
            row = iou[i - s]
            members = np.flatnonzero((row > iou_threshold) & ~assigned[s:]) + s
            members = members[members > i]
            assigned[i] = True
            assigned[members] = True
            clusters.append([i, *members.tolist()])
    return clusters


def _best_per_source(cluster: Sequence[int], source: np.ndarray) -> list[int]:
    """The first (best-scoring) member of each source in a score-sorted cluster."""
    best: dict[int, int] = {}
    for i in cluster:
        best.setdefault(int(source[i]), i)
    return list(best.values())


def _fuse_masks(rles: Sequence[dict], weights: np.ndarray, vote: float, size) -> tuple[np.ndarray, tuple[int, int]]:
    boxes = np.asarray(mask_utils.toBbox([dict(r) for r in rles])).reshape(-1, 4)
    x0, y0 = int(boxes[:, 0].min()), int(boxes[:, 1].min())
    x1 = int((boxes[:, 0] + boxes[:, 2]).max())
    y1 = int((boxes[:, 1] + boxes[:, 3]).max())
    w = weights / weights.sum()
    acc = np.zeros((y1 - y0, x1 - x0))
    for r, wi in zip(rles, w):
        acc += wi * decode_crop(r, (y0, x0, y1, x1))
    return acc >= vote - 1e-9, (y0, x0)


def merge_detections(parts: Sequence[Detections], method: str = "wmf", iou_threshold: float = 0.5,
                     weights: Sequence[float] | None = None, vote: float = 0.5,
                     max_dets: int | None = None) -> Detections:
    """Pool ``parts`` (detections of one image from several models/augmentations, all in
    image coordinates) and fuse masks whose IoU > ``iou_threshold``.

    ``method="nms"``: keep the highest-scoring mask of each cluster (its score).
    ``method="wmf"``: each source votes once per cluster, with its best-scoring member
    there (a lower-scoring duplicate from the same pass neither votes nor drags the
    score down); fused mask = pixels whose score-weighted vote >= ``vote``; fused score
    = sum of the voters' scores / sources, sources = len(parts) (a source that missed
    the nucleus counts 0).
    ``weights`` (one per part) scale the scores of each part before ranking/voting.
    Returns detections sorted by score, at most ``max_dets``.
    """
    if method not in MERGE_METHODS:
        raise InvalidRequest(f"merge method {method!r} unknown; use one of {MERGE_METHODS}")
    if not parts:
        raise ValueError("merge needs at least one set of detections")
    w = np.ones(len(parts)) if weights is None else np.asarray(weights, np.float64)
    if len(w) != len(parts):
        raise ValueError(f"{len(w)} weights for {len(parts)} parts")
    pooled = Detections.concat(list(parts))
    source = np.concatenate([np.full(len(p), k) for k, p in enumerate(parts)]).astype(int)
    scores = np.clip(pooled.scores * w[source], 0.0, 1.0)
    order = np.argsort(-scores, kind="stable")
    rles = [pooled.rles[i] for i in order]
    scores, source = scores[order], source[order]
    ms = None if pooled.mask_scores is None else pooled.mask_scores[order]
    if not len(rles):
        return Detections.empty(pooled.size)
    clusters = _clusters(rles, iou_threshold)
    n_sources = len(parts)
    if method == "nms":
        keep = [c[0] for c in clusters]
        out = Detections([rles[i] for i in keep], scores[keep], pooled.size,
                         mask_scores=None if ms is None else ms[keep])
    else:
        out_rles: list[dict | None] = []
        out_scores = []
        crops, offsets, slots = [], [], []
        clusters = [_best_per_source(c, source) for c in clusters]
        for c in clusters:
            cs = scores[c]
            out_scores.append(float(cs.sum() / n_sources))
            if len(c) == 1:
                out_rles.append(rles[c[0]])
                continue
            crop, off = _fuse_masks([rles[i] for i in c], np.maximum(cs, 1e-6), vote, pooled.size)
            slots.append(len(out_rles))
            out_rles.append(None)
            crops.append(crop)
            offsets.append(off)
        for slot, rle in zip(slots, encode_crops(crops, offsets, pooled.size)):
            out_rles[slot] = rle
        out = Detections(out_rles, out_scores, pooled.size,
                         mask_scores=None if ms is None else [float(ms[c].mean()) for c in clusters])
        out = out.subset(np.flatnonzero(out.areas > 0))
    return out.top(max_dets)
