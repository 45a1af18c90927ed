"""The nuclei field's own metrics, beside COCO AP: AJI, AJI+, PQ (= DQ x SQ), object F1 /
precision / recall at IoU 0.5, and pixel Dice.

Each takes two label images of one image, ``gt`` and ``pred`` (H, W) ints: 0 background, every
other value one nucleus. A model's overlapping masks become a label image first, by the
:class:`~helpers.infer.segmentation.SegmentationRule` the exports use (its score threshold, the
higher score owning a shared pixel, one connected piece per nucleus), because these metrics,
unlike COCO AP, score one segmentation: every detection the rule keeps counts, not the top 100.

The definitions are those of HoVer-Net's ``metrics/stats_utils.py`` (Graham et al. 2019), which
the field's papers (HoVer-Net, CellViT, the PanNuke and MoNuSAC benchmarks) report with:
``get_fast_aji``, ``get_fast_aji_plus``, ``get_fast_pq`` and ``get_dice_1`` (these agree with
them to 1e-6 on random label images, checked against vqdang/hover_net's code). No maintained
package on PyPI computes AJI (StarDist's ``matching`` has F1 and PQ, not AJI; torchmetrics' PQ
is for semantic classes), so they are written once, here, and pinned by hand-computed cases in
``tests/infer/test_instance_metrics.py``.

Conventions where the references divide by zero: an image with no nuclei and no detections
scores 1 (nothing to find, nothing found); one side empty and the other not scores 0.
:func:`score_images` averages over images, as MoNuSeg and HoVer-Net do.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
from scipy.optimize import linear_sum_assignment

from helpers.infer.segmentation import DEFAULT_RULE, SegmentationRule

MATCH_IOU = 0.5
COLUMNS = ("AJI", "AJI+", "PQ", "DQ", "SQ", "F1@0.5", "precision@0.5", "recall@0.5", "Dice")
TABLE_COLUMNS = ("AJI", "PQ", "F1@0.5")  # beside COCO AP in notebook 04's and the benchmark's tables


class Overlaps:
    """Pairwise pixel counts of two label images, their ids made consecutive: ``inter``
    (n_gt, n_pred) intersections, ``gt_area`` (n_gt,), ``pred_area`` (n_pred,)."""

    def __init__(self, gt: np.ndarray, pred: np.ndarray):
        gt, pred = np.asarray(gt), np.asarray(pred)
        if gt.shape != pred.shape or gt.ndim != 2:
            raise ValueError(f"label images of one shape (H, W) needed, got {gt.shape} and {pred.shape}")
        g = np.unique(gt, return_inverse=True)
        p = np.unique(pred, return_inverse=True)
        g_idx = g[1].reshape(-1) + (0 if g[0][0] == 0 else 1)  # 0 = background, 1.. = instances
        p_idx = p[1].reshape(-1) + (0 if p[0][0] == 0 else 1)
        n_g, n_p = int(g_idx.max(initial=0)), int(p_idx.max(initial=0))
        joint = np.bincount(g_idx * (n_p + 1) + p_idx, minlength=(n_g + 1) * (n_p + 1))
        joint = joint.reshape(n_g + 1, n_p + 1)
        self.inter = joint[1:, 1:]
        self.gt_area = joint[1:].sum(axis=1)
        self.pred_area = joint[:, 1:].sum(axis=0)
        self.union = self.gt_area[:, None] + self.pred_area[None, :] - self.inter
        self.iou = self.inter / np.maximum(self.union, 1)

    @property
    def empty(self) -> bool:
        return not len(self.gt_area) and not len(self.pred_area)


def _aji_of_pairs(o: Overlaps, gt_idx: np.ndarray, pred_idx: np.ndarray) -> float:
    inter = o.inter[gt_idx, pred_idx].sum()
    union = o.union[gt_idx, pred_idx].sum()
    union += o.gt_area[np.setdiff1d(np.arange(len(o.gt_area)), gt_idx)].sum()
    union += o.pred_area[np.setdiff1d(np.arange(len(o.pred_area)), pred_idx)].sum()
    return float(inter / union) if union else 1.0


def aji(gt: np.ndarray, pred: np.ndarray) -> float:
    """Aggregated Jaccard Index (Kumar et al. 2017, IEEE TMI 36(7), "A dataset and a technique
    for generalized nuclear segmentation"; MoNuSeg's ranking metric): each nucleus is paired with
    the detection of highest IoU, C = sum of paired intersections, U = sum of paired unions plus
    every unpaired nucleus's and detection's area; AJI = C / U. A detection may pair with several
    nuclei, and its area then counts in U once per pair (HoVer-Net's ``get_fast_aji``)."""
    o = Overlaps(gt, pred)
    if o.empty:
        return 1.0
    if not len(o.gt_area) or not len(o.pred_area):
        return 0.0
    best = o.iou.argmax(axis=1)
    paired = np.flatnonzero(o.iou[np.arange(len(best)), best] > 0)
    return _aji_of_pairs(o, paired, best[paired])


def aji_plus(gt: np.ndarray, pred: np.ndarray) -> float:
    """AJI+ (Graham et al. 2019, Medical Image Analysis 58, "HoVer-Net", section 4.3): AJI with
    one-to-one pairs (the assignment maximising the summed IoU, pairs of IoU > 0), so a detection
    covering two nuclei is counted once (HoVer-Net's ``get_fast_aji_plus``)."""
    o = Overlaps(gt, pred)
    if o.empty:
        return 1.0
    if not len(o.gt_area) or not len(o.pred_area):
        return 0.0
    g, p = linear_sum_assignment(-o.iou)
    keep = o.iou[g, p] > 0
    return _aji_of_pairs(o, g[keep], p[keep])


def matching(gt: np.ndarray, pred: np.ndarray, iou: float = MATCH_IOU) -> dict:
    """Panoptic quality (Kirillov et al. 2019, "Panoptic Segmentation", CVPR; for nuclei as
    HoVer-Net reports it, ``get_fast_pq``) and the object counts behind it. At IoU > 0.5 a
    nucleus and a detection match at most once each; DQ = TP / (TP + FP/2 + FN/2) (the object
    F1), SQ = the mean IoU of the matches, PQ = DQ x SQ. Precision = TP / detections, recall =
    TP / nuclei."""
    o = Overlaps(gt, pred)
    if iou >= 0.5:
        g, p = np.nonzero(o.iou > iou)  # unique at IoU > 0.5
    else:
        g, p = linear_sum_assignment(-o.iou)
        keep = o.iou[g, p] > iou
        g, p = g[keep], p[keep]
    tp, n_gt, n_pred = len(g), len(o.gt_area), len(o.pred_area)
    fp, fn = n_pred - tp, n_gt - tp
    if o.empty:
        dq = sq = precision = recall = 1.0
    else:
        dq = tp / (tp + 0.5 * fp + 0.5 * fn)
        sq = float(o.iou[g, p].mean()) if tp else 0.0
        precision = tp / n_pred if n_pred else 0.0
        recall = tp / n_gt if n_gt else 0.0
    return {"PQ": dq * sq, "DQ": dq, "SQ": sq, "F1": dq, "precision": precision, "recall": recall,
            "TP": tp, "FP": fp, "FN": fn}


def panoptic_quality(gt: np.ndarray, pred: np.ndarray, iou: float = MATCH_IOU) -> float:
    """PQ = DQ x SQ (:func:`matching`)."""
    return matching(gt, pred, iou)["PQ"]


def dice(gt: np.ndarray, pred: np.ndarray) -> float:
    """Pixel Dice of the foregrounds, 2|G n P| / (|G| + |P|) (HoVer-Net's ``get_dice_1``):
    how much nucleus area is found, whatever the instances."""
    g, p = np.asarray(gt) > 0, np.asarray(pred) > 0
    total = int(g.sum()) + int(p.sum())
    return 2.0 * int((g & p).sum()) / total if total else 1.0


def image_scores(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Every metric of :data:`COLUMNS` for one image's label images."""
    m = matching(gt, pred)
    return {"AJI": aji(gt, pred), "AJI+": aji_plus(gt, pred), "PQ": m["PQ"], "DQ": m["DQ"],
            "SQ": m["SQ"], "F1@0.5": m["F1"], "precision@0.5": m["precision"],
            "recall@0.5": m["recall"], "Dice": dice(gt, pred)}


@dataclass
class FieldScores:
    """:func:`score_images`' answer: the mean over images (``summary``, keyed by
    :data:`COLUMNS`) and one row per image (with ``nuclei`` in the truth and ``found`` in the
    segmentation)."""

    summary: dict[str, float]
    per_image: list[dict]
    rule: SegmentationRule

    def report(self):
        from helpers.tables import Report, Table

        mean = "  ".join(f"{k}={v:.4f}" for k, v in self.summary.items())
        return Report([f"segmentation: {self.rule.describe()}", f"mean over images: {mean}", "",
                       Table(self.per_image)])

    def format(self) -> str:
        return str(self.report())


def count(labels: np.ndarray) -> int:
    """How many nuclei a label image holds."""
    return int(np.count_nonzero(np.bincount(np.asarray(labels).ravel())[1:]))


def truth_label_images(ground_truth: Mapping, sizes: Mapping | None = None) -> dict[str, np.ndarray]:
    """{image_id: label image} of the ground truth ({image_id: Detections | RLEs | (n, H, W)
    masks}); ``sizes`` ({image_id: (H, W)}) sizes an image without nuclei."""
    from helpers.detections import Detections
    from helpers.infer.evaluate import gt_rles

    out = {}
    for image_id in sorted(ground_truth):
        rles = gt_rles(ground_truth[image_id], image_id)
        size = tuple(rles[0]["size"]) if rles else (sizes or {}).get(image_id)
        if size is None:
            raise ValueError(f"image {image_id}: no ground truth masks and no predictions to size it")
        out[image_id] = Detections(rles, np.ones(len(rles)), size).label_image()
    return out


def score_images(predictions: Mapping, ground_truth: Mapping, rule: SegmentationRule = DEFAULT_RULE,
                 truth: Mapping | None = None) -> FieldScores:
    """The field's metrics of ``predictions`` ({image_id: Detections}) against ``ground_truth``
    ({image_id: Detections | RLEs | (n, H, W) masks}), image by image and their mean, on the
    segmentation ``rule`` makes of each image's detections; an image without predictions counts
    as none found. ``truth``: :func:`truth_label_images` already made."""
    from helpers.detections import Detections

    truth = truth or truth_label_images(ground_truth, {i: p.size for i, p in predictions.items()})
    rows = []
    for image_id, gt in truth.items():
        pred = predictions.get(image_id)
        found, _ = rule.label_image(pred if pred is not None else Detections.empty(gt.shape))
        rows.append({"image_id": image_id, "nuclei": count(gt), "found": count(found), **image_scores(gt, found)})
    mean = {k: float(np.mean([r[k] for r in rows])) if rows else float("nan") for k in COLUMNS}
    return FieldScores(mean, rows, rule)
