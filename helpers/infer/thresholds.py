"""Notebook 04: the segmentation rule of the exports, chosen on validation by the field's metric.

The exports (GeoJSON, label image, CSV) and the field's AJI / PQ / F1 keep the nuclei a
:class:`~helpers.infer.segmentation.SegmentationRule` keeps. :func:`choose_rule` picks it on the
validation split, on the scores the chosen strategy and rescoring really give:

1. **the threshold curve**: every candidate score threshold, each image's mean and worst PQ, AJI
   and F1@0.5, and the share of its nuclei the worst image keeps; the best by ``metric`` (PQ by
   default, as StarDist's ``optimize_thresholds`` picks its thresholds on validation data). The
   top of the curve is flat: thresholds within :data:`TOLERANCE` of the best score alike on a few
   validation images, and of those the one that keeps the most nuclei is taken, since nuclei
   scored low are what tissue unlike the training images loses first;
2. **the other cuts at that threshold**: ``min_kept`` (when a detection that lost pixels to better
   ones is a duplicate) and ``min_area``; the default is kept unless another value scores more
   than :data:`TOLERANCE` higher.

Each image is painted once per setting of the other cuts (:func:`helpers.infer.segmentation.paint`),
and every threshold is a prefix of that painting.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

import numpy as np

from helpers.errors import InvalidRequest
from helpers.detections import Detections
from helpers.infer import instance_metrics
from helpers.infer.segmentation import DEFAULT_RULE, SegmentationRule, cut, paint

EXPORT_METRICS = ("PQ", "AJI", "F1@0.5")
DEFAULT_EXPORT_METRIC = "PQ"
THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.05, 0.951, 0.05))
MIN_KEPT = (0.0, 0.25, 0.5, 0.75)
MIN_AREA = (0, 10, 20, 40)
CURVE_COLUMNS = ("AJI", "PQ", "F1@0.5")
# Differences this small in a mean over a few validation images are noise: a choice within it of
# the best is as good (measured on the real data: the PQ curve's top is flat over 0.2-0.3).
TOLERANCE = 0.005


@dataclass
class RuleChoice:
    """What :func:`choose_rule` measured and chose."""

    metric: str
    rule: SegmentationRule
    curve: list[dict]                  # one row per threshold (the other cuts at their defaults)
    cuts: list[dict] = field(default_factory=list)  # the other cuts tried at the chosen threshold
    per_image: list[dict] = field(default_factory=list)  # the field's metrics per image, chosen rule

    @property
    def summary(self) -> dict:
        """The row of the chosen rule: its mean and worst-image metrics."""
        return next(r for r in (*self.cuts, *self.curve) if _rule_of(r) == self.rule)

    def report(self):
        from helpers.tables import Report, Table

        parts = [f"chosen by {self.metric} (mean over the validation images): {self.rule.describe()}", "",
                 Table([_display(r) for r in self.curve], "threshold curve")]
        if self.cuts:
            parts += ["", Table([_display(r) for r in self.cuts], "other cuts at that threshold")]
        if self.per_image:
            parts += ["", Table(self.per_image, "per image, chosen rule")]
        return Report(parts)

    def format(self) -> str:
        return str(self.report())

    def figure(self):
        """The threshold curve: mean and worst image of each metric, the worst image's share of
        its nuclei kept, and the chosen threshold."""
        from matplotlib.figure import Figure

        t = [r["min_score"] for r in self.curve]
        fig = Figure(figsize=(9, 3.6))
        ax, share = fig.subplots(1, 2)
        for (col, color) in zip(CURVE_COLUMNS, ("#1b9e77", "#d95f02", "#7570b3")):
            ax.plot(t, [r[col] for r in self.curve], color=color, lw=2, label=f"{col} (mean)")
            ax.plot(t, [r[f"worst {col}"] for r in self.curve], color=color, lw=1, ls="--",
                    label=f"{col} (worst image)")
        share.plot(t, [r["worst kept"] for r in self.curve], color="black", lw=2, label="worst image")
        share.plot(t, [r["kept"] for r in self.curve], color="grey", lw=1, label="mean")
        share.axhline(0.5, color="red", lw=1, ls=":", label="half its nuclei")
        for a in (ax, share):
            a.axvline(self.rule.min_score, color="black", lw=1, ls=":")
            a.set_xlabel("score threshold")
            a.grid(alpha=0.3)
        ax.set_title(f"validation: chosen {self.rule.min_score:g} by {self.metric}", fontsize=10)
        ax.legend(fontsize=7, ncol=2)
        share.set_title("nuclei found / nuclei in the truth", fontsize=10)
        share.legend(fontsize=7)
        fig.tight_layout()
        return fig


def choose_rule(predictions: Mapping[str, Detections], ground_truth: Mapping,
                metric: str = DEFAULT_EXPORT_METRIC, base: SegmentationRule = DEFAULT_RULE,
                thresholds: Sequence[float] = THRESHOLDS, fixed: float | None = None) -> RuleChoice:
    """The segmentation rule scoring best by ``metric`` on validation (module doc); ``fixed``: the
    user's threshold instead of the curve's best (the other cuts are still chosen)."""
    if metric not in EXPORT_METRICS:
        raise InvalidRequest(f"metric {metric!r}: the exports are chosen by one of {EXPORT_METRICS}")
    truth = instance_metrics.truth_label_images(ground_truth, {i: p.size for i, p in predictions.items()})
    preds = {i: predictions.get(i) or Detections.empty(g.shape) for i, g in truth.items()}
    curve = threshold_curve(preds, truth, base, thresholds)
    best = _pick(curve, metric)["min_score"] if fixed is None else float(fixed)
    rule = replace(base, min_score=best, relative=0.0)
    cuts = []
    for min_kept in MIN_KEPT:
        for min_area in MIN_AREA:
            cuts += threshold_curve(preds, truth, replace(rule, min_kept=min_kept, min_area=min_area),
                                    [rule.min_score])
    default = next(r for r in cuts if _rule_of(r) == rule)
    top = max(cuts, key=lambda r: r[metric])
    if top[metric] > default[metric] + TOLERANCE:
        rule = _rule_of(top)
    per_image = instance_metrics.score_images(preds, ground_truth, rule, truth=truth).per_image
    return RuleChoice(metric, rule, curve, cuts, per_image)


def threshold_curve(predictions: Mapping[str, Detections], truth: Mapping[str, np.ndarray],
                    rule: SegmentationRule = DEFAULT_RULE, thresholds: Sequence[float] = THRESHOLDS) -> list[dict]:
    """One row per threshold of ``rule`` with one threshold for every image: the mean over images
    of AJI, PQ and F1@0.5, the worst image's, and the share of each image's nuclei found (mean
    and worst). ``truth``: {image_id: label image}."""
    per = {t: [] for t in thresholds}
    for image_id, gt in truth.items():
        labels, scores = paint(predictions[image_id], min(thresholds), rule.min_kept, rule.min_area)
        n = max(instance_metrics.count(gt), 1)
        for t in thresholds:
            found, _ = cut(labels, scores, t)
            m = instance_metrics.matching(gt, found)
            per[t].append({"AJI": instance_metrics.aji(gt, found), "PQ": m["PQ"], "F1@0.5": m["F1"],
                           "kept": instance_metrics.count(found) / n})
    rows = []
    for t, images in per.items():
        row = {**replace(rule, min_score=float(t), relative=0.0).to_json()}
        for col in (*CURVE_COLUMNS, "kept"):
            values = [im[col] for im in images]
            row[col] = float(np.mean(values))
            row[f"worst {col}"] = float(np.min(values))
        rows.append(row)
    return rows


# Rules whose threshold follows each image's own scores (module doc of helpers.infer.segmentation):
# x the image's score quantile, uncapped (min_score 1) or under the absolute threshold.
RELATIVE = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
QUANTILES = (0.5, 0.75, 0.9)


def rule_families(base: SegmentationRule = DEFAULT_RULE) -> dict[str, list[SegmentationRule]]:
    """The candidate rules of each kind, for :func:`compare_rule_families`."""
    absolute = [replace(base, min_score=float(t), relative=0.0) for t in THRESHOLDS]
    relative = [replace(base, min_score=1.0, relative=a, quantile=q) for a in RELATIVE for q in QUANTILES]
    capped = [replace(base, min_score=float(t), relative=a, quantile=q)
              for t in THRESHOLDS if t >= 0.3 for a in RELATIVE for q in QUANTILES]
    return {"absolute": absolute, "relative": relative, "relative, capped": capped}


def rule_scores(predictions: Mapping[str, Detections], truth: Mapping[str, np.ndarray],
                rules: Sequence[SegmentationRule]) -> dict[str, list[dict]]:
    """{image_id: [AJI, PQ, F1@0.5, share kept and threshold of each rule]}. Rules sharing the
    overlap cuts share one painting of the image, and rules keeping the same nuclei one scoring."""
    out = {}
    for image_id, gt in truth.items():
        dets = predictions[image_id]
        paintings, scored, rows = {}, {}, []
        n = max(instance_metrics.count(gt), 1)
        for rule in rules:
            key = (rule.min_kept, rule.min_area)
            if key not in paintings:
                paintings[key] = paint(dets, 0.0, *key)
            threshold = rule.threshold(dets)
            labels, scores = paintings[key]
            k = (key, int(np.searchsorted(-scores, -threshold, side="right")))  # the nuclei it keeps
            if k not in scored:
                found, _ = cut(labels, scores, threshold)
                m = instance_metrics.matching(gt, found)
                scored[k] = {"AJI": instance_metrics.aji(gt, found), "PQ": m["PQ"], "F1@0.5": m["F1"],
                             "kept": instance_metrics.count(found) / n}
            rows.append({**scored[k], "threshold": threshold})
        out[image_id] = rows
    return out


def compare_rule_families(predictions: Mapping[str, Detections], ground_truth: Mapping,
                          metric: str = DEFAULT_EXPORT_METRIC, families: Mapping | None = None,
                          protocols: Mapping | None = None, tolerance: float = TOLERANCE) -> dict[str, list[dict]]:
    """How each kind of rule holds on images it was not chosen on. ``protocols``: {name: None
    (leave-one-image-out: each image scored by the family's rule chosen on the others) or
    (fit_ids, test_ids) (chosen on the first, scored on the second: tissue the rule never saw)}.
    {protocol: one row per family: the mean and the worst image of each metric, the worst share
    of nuclei kept, the rule chosen on all fit images, and the images' rows}."""
    families = families or rule_families()
    protocols = protocols or {"leave-one-image-out": None}
    truth = instance_metrics.truth_label_images(ground_truth, {i: p.size for i, p in predictions.items()})
    preds = {i: predictions.get(i) or Detections.empty(g.shape) for i, g in truth.items()}
    tables = {name: rule_scores(preds, truth, rules) for name, rules in families.items()}
    return {protocol: [_held_out(name, families[name], tables[name], split, metric, tolerance)
                       for name in families]
            for protocol, split in protocols.items()}


def _held_out(name, rules, table, split, metric, tolerance) -> dict:
    fit_all = list(split[0]) if split else list(table)
    splits = [(list(split[0]), list(split[1]))] if split else [([j for j in table if j != i], [i]) for i in table]
    held = []
    for fit, test in splits:
        best = _pick_index(table, fit, metric, tolerance)
        held += [{**table[i][best], "image_id": i} for i in test]
    row = {"rule": name}
    for col in (*CURVE_COLUMNS, "kept"):
        row[col] = float(np.mean([h[col] for h in held]))
        row[f"worst {col}"] = float(np.min([h[col] for h in held]))
    chosen = _pick_index(table, fit_all, metric, tolerance)
    return {**row, "chosen on all": rules[chosen].describe(), "per image": held}


def _pick(rows: Sequence[Mapping], metric: str, tolerance: float = TOLERANCE) -> Mapping:
    """Of the rows within ``tolerance`` of the best ``metric``, the one keeping the most nuclei."""
    best = max(r[metric] for r in rows)
    return max((r for r in rows if r[metric] >= best - tolerance), key=lambda r: r["kept"])


def _pick_index(table: Mapping[str, list[dict]], image_ids: Sequence[str], metric: str, tolerance: float) -> int:
    """:func:`_pick` over the rules of ``table`` (:func:`rule_scores`), by their means over ``image_ids``."""
    n = len(next(iter(table.values())))
    means = [{col: float(np.mean([table[i][r][col] for i in image_ids])) for col in (metric, "kept")}
             for r in range(n)]
    picked = _pick(means, metric, tolerance)
    return means.index(picked)


def _rule_of(row: Mapping) -> SegmentationRule:
    return SegmentationRule.from_json({k: row[k] for k in SegmentationRule.__dataclass_fields__})


def _display(row: Mapping) -> dict:
    return {k: v for k, v in row.items() if k not in ("relative", "quantile")}
