"""Segmentation mAP on the validation split with pycocotools' COCOeval (iouType "segm").

``evaluate(predictions, ground_truth)`` returns an ``EvalResult`` with

* ``summary``: AP@[.5:.95], AP50 and AP75, each at maxDets 100 and 1000, keyed
  ``"AP@100"``, ``"AP50@100"``, ``"AP75@100"``, ``"AP@1000"``, ... The default
  COCOeval summary only reports AP at maxDets=100; we set ``params.maxDets`` to
  ``max_dets`` and read the stats from ``eval["precision"]`` ourselves.
* ``per_image``: one row per image: n_gt, n_pred, AP@<m> for each m, and the
  TP / FP / missed counts at IoU 0.5 with the largest maxDets.
* ``matches``: per image, which predictions are TP / FP and which GT nuclei are
  missed at IoU 0.5 (for overlays). Predictions beyond the largest maxDets are
  not evaluated by COCO; they are neither TP nor FP (``considered`` False).

Image ids are the dataset's string ids; COCO's integer ids are assigned here.
"""
from __future__ import annotations

import contextlib
import copy
import io
import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
from pycocotools.cocoeval import COCOeval

from helpers.coco_format import CATEGORY_ID, coco_from_dataset, gt_dataset, load_results, result_entries
from helpers.detections import Detections
from helpers.rle import encode_masks
from helpers.tables import Report, Table
from helpers.errors import UserError

DEFAULT_MAX_DETS = (100, 1000)
MATCH_IOU = 0.5
# What the course leaderboard scores: AP at IoU 0.5 with pycocotools' 100 detections per image
# (docs/quality.md gives the evidence). Notebook 04 chooses by it by default.
LEADERBOARD_METRIC = "AP50@100"


class EvaluationError(UserError, ValueError):
    """Predictions and ground truth do not fit together."""


@dataclass
class ImageMatch:
    """At IoU 0.5, in the order of the image's Detections / GT list."""

    tp: np.ndarray          # bool (n_pred,): matched a GT nucleus
    fp: np.ndarray          # bool (n_pred,): evaluated and unmatched
    considered: np.ndarray  # bool (n_pred,): within the top-maxDets by score
    gt_matched: np.ndarray  # bool (n_gt,)

    @property
    def missed(self) -> np.ndarray:
        return ~self.gt_matched


@dataclass
class EvalResult:
    summary: dict[str, float]
    per_image: list[dict]
    matches: dict[str, ImageMatch] = field(repr=False)
    max_dets: tuple[int, ...] = DEFAULT_MAX_DETS

    def report(self) -> Report:
        """The summary and the per-image table (a DataFrame in a notebook)."""
        return Report(["  ".join(f"{k}={v:.4f}" for k, v in self.summary.items()), "", Table(self.per_image)])

    def format(self) -> str:
        """The summary and the per-image table as text."""
        return str(self.report())


def gt_rles(value, image_id: str) -> list[dict]:
    """One image's ground truth (Detections, an (n, H, W) mask stack or RLEs) as RLEs."""
    if isinstance(value, Detections):
        return list(value.rles)
    if isinstance(value, np.ndarray):
        return encode_masks(value) if len(value) else []
    return list(value)


def _ap(precision: np.ndarray) -> float:
    valid = precision[precision > -1]
    return float(np.mean(valid)) if valid.size else math.nan


def _stats(E: COCOeval, max_dets: Sequence[int]) -> dict[str, float]:
    prec = E.eval["precision"]  # [T, R, K, A, M]
    iou_thrs = E.params.iouThrs
    t50 = int(np.argmin(np.abs(iou_thrs - 0.5)))
    t75 = int(np.argmin(np.abs(iou_thrs - 0.75)))
    out: dict[str, float] = {}
    for m_idx, m in enumerate(E.params.maxDets):
        if m not in max_dets:
            continue
        out[f"AP@{m}"] = _ap(prec[:, :, :, 0, m_idx])
        out[f"AP50@{m}"] = _ap(prec[t50, :, :, 0, m_idx])
        out[f"AP75@{m}"] = _ap(prec[t75, :, :, 0, m_idx])
    # order: AP@100 AP50@100 AP75@100 AP@1000 ...
    return {k: out[k] for m in max_dets for k in (f"AP@{m}", f"AP50@{m}", f"AP75@{m}")}


def evaluate(predictions: Mapping[str, Detections], ground_truth: Mapping[str, object],
             max_dets: Sequence[int] = DEFAULT_MAX_DETS, per_image: bool = True,
             missing: str = "error") -> EvalResult:
    """COCO segm evaluation of ``predictions`` ({image_id: Detections}) against
    ``ground_truth`` ({image_id: list of RLE | Detections | (N, H, W) masks}).

    Every GT image is evaluated. An image with GT but no predictions raises
    EvaluationError, or counts as "no detections" with ``missing="empty"``.
    Predictions for an image without GT raise EvaluationError.
    """
    max_dets = tuple(sorted(int(m) for m in max_dets))
    image_ids = _check_inputs(predictions, ground_truth, max_dets, missing)
    gts = {i: gt_rles(ground_truth[i], i) for i in image_ids}
    E, pred_offset = _run_cocoeval(predictions, gts, image_ids, max_dets)
    summary = _stats(E, max_dets)
    matches = _matches(E, predictions, gts, image_ids, pred_offset)
    rows = [_image_row(E, i, image_id, gts, matches[image_id], max_dets)
            for i, image_id in enumerate(image_ids)] if per_image else []
    return EvalResult(summary, rows, matches, max_dets)


def _check_inputs(predictions, ground_truth, max_dets, missing: str) -> list[str]:
    """The GT image ids to evaluate, after refusing what cannot be evaluated."""
    if not max_dets:
        raise ValueError("max_dets must name at least one cap, e.g. (100, 1000)")
    extra = sorted(set(predictions) - set(ground_truth))
    if extra:
        raise EvaluationError(f"predictions for images without ground truth: {extra[:5]}"
                              f"{' ...' if len(extra) > 5 else ''}; evaluate on the validation split only")
    image_ids = sorted(ground_truth)
    if not image_ids:
        raise EvaluationError("no ground-truth images to evaluate")
    absent = [i for i in image_ids if i not in predictions]
    if absent and missing != "empty":
        raise EvaluationError(f"no predictions for {len(absent)} validation image(s): {absent[:5]}; "
                              "predict them first (or pass missing='empty')")
    return image_ids


def _run_cocoeval(predictions, gts, image_ids, max_dets) -> tuple[COCOeval, dict[str, int]]:
    """pycocotools' segm COCOeval over all images, evaluated and accumulated; also the index
    of each image's first result entry (result ids are 1..M in entry order)."""
    images, entries, pred_offset = [], [], {}
    for n, image_id in enumerate(image_ids, start=1):
        dets = predictions.get(image_id)
        if dets is not None:
            size = dets.size
            if gts[image_id] and list(gts[image_id][0]["size"]) != list(size):
                raise EvaluationError(f"{image_id}: predictions are {list(size)} but ground truth is "
                                      f"{gts[image_id][0]['size']}")
        elif gts[image_id]:
            size = tuple(gts[image_id][0]["size"])
        else:
            size = (1, 1)
        images.append({"id": n, "file_name": image_id, "size": size, "rles": gts[image_id]})
        pred_offset[image_id] = len(entries)
        if dets is not None and len(dets):
            entries.extend(result_entries(n, dets))

    coco_gt = coco_from_dataset(gt_dataset(images))
    coco_dt = load_results(coco_gt, entries)
    E = COCOeval(coco_gt, coco_dt, iouType="segm")
    E.params.imgIds = list(range(1, len(image_ids) + 1))
    E.params.catIds = [CATEGORY_ID]
    E.params.maxDets = list(max_dets)
    E.params.areaRng = [[0, 1e10]]
    E.params.areaRngLbl = ["all"]
    with contextlib.redirect_stdout(io.StringIO()):
        E.evaluate()
        E.accumulate()
    return E, pred_offset


def _matches(E: COCOeval, predictions, gts, image_ids, pred_offset) -> dict[str, ImageMatch]:
    """Each image's TP/FP/missed at IoU ``MATCH_IOU``, from COCOeval's per-image matching."""
    # GT ann ids are assigned 1..N in image order by gt_dataset; result ids 1..M in entry order.
    gt_offset, total = {}, 0
    for image_id in image_ids:
        gt_offset[image_id] = total
        total += len(gts[image_id])
    t50 = int(np.argmin(np.abs(E.params.iouThrs - MATCH_IOU)))
    matches: dict[str, ImageMatch] = {}
    for i, image_id in enumerate(image_ids):
        n_pred = len(predictions.get(image_id) or [])
        n_gt = len(gts[image_id])
        m = ImageMatch(np.zeros(n_pred, bool), np.zeros(n_pred, bool), np.zeros(n_pred, bool),
                       np.zeros(n_gt, bool))
        e = E.evalImgs[i]  # one category, one area range -> index = image index
        if e is not None:
            dt_idx = np.asarray(e["dtIds"], np.int64) - 1 - pred_offset[image_id]
            matched = np.asarray(e["dtMatches"])[t50] > 0 if len(dt_idx) else np.zeros(0, bool)
            m.considered[dt_idx] = True
            m.tp[dt_idx] = matched
            m.fp[dt_idx] = ~matched
            gt_idx = np.asarray(e["gtIds"], np.int64) - 1 - gt_offset[image_id]
            if len(gt_idx):
                m.gt_matched[gt_idx] = np.asarray(e["gtMatches"])[t50] > 0
        matches[image_id] = m
    return matches


def _accumulate_one_image(E: COCOeval, i: int, max_dets) -> dict[str, float]:
    """The summary of image ``i`` (0-based) alone, from an evaluated ``E``.

    COCOeval.accumulate(p) indexes evalImgs by the position in p.imgIds, not in the
    evaluated list, so the image is shown only its own entry: this swaps pycocotools'
    private ``evalImgs``/``_paramsEval`` for the call, and puts them back afterwards.
    """
    all_eval_imgs, all_pe = E.evalImgs, E._paramsEval  # noqa: SLF001
    try:
        E.evalImgs = [all_eval_imgs[i]]
        E._paramsEval = copy.copy(all_pe)  # noqa: SLF001
        E._paramsEval.imgIds = [i + 1]  # noqa: SLF001
        p = copy.copy(E.params)
        p.imgIds = [i + 1]
        with contextlib.redirect_stdout(io.StringIO()):
            E.accumulate(p)
        return _stats(E, max_dets)
    finally:
        E.evalImgs, E._paramsEval = all_eval_imgs, all_pe  # noqa: SLF001


def _image_row(E: COCOeval, i: int, image_id: str, gts, m: ImageMatch, max_dets) -> dict:
    """One row of the per-image table: AP at each cap, AP50 at the largest, TP/FP/missed at 0.5."""
    stats = _accumulate_one_image(E, i, max_dets)
    row = {"image_id": image_id, "n_gt": len(gts[image_id]), "n_pred": len(m.tp)}
    for md in max_dets:
        row[f"AP@{md}"] = stats[f"AP@{md}"]
    row[f"AP50@{max_dets[-1]}"] = stats[f"AP50@{max_dets[-1]}"]
    row.update({"TP50": int(m.tp.sum()), "FP50": int(m.fp.sum()), "missed50": int(m.missed.sum())})
    return row


def ceiling(ground_truth: Mapping[str, object], max_dets: Sequence[int] = DEFAULT_MAX_DETS) -> dict[str, float]:
    """What perfect masks would score on this split: the ground truth evaluated as predictions.

    Below 1 where an image holds more nuclei than a maxDets cap keeps: at maxDets 100 an image
    of ~390 nuclei can match at most a quarter of them (the leaderboard's limit). Every mask is
    exact, so the order of equal scores does not matter.
    """
    preds = {}
    for image_id, value in ground_truth.items():
        rles = gt_rles(value, image_id)
        if rles:
            preds[image_id] = Detections(rles, np.ones(len(rles)), tuple(rles[0]["size"]))
    return evaluate(preds, ground_truth, max_dets, per_image=False, missing="empty").summary

