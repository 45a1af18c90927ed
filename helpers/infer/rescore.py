"""Leaderboard-aware ranking: give each detection's final score more than the classifier's confidence.

COCO's evaluation keeps the 100 highest-scoring detections of each image (``maxDets`` 100, the
leaderboard's setting). An image holding ~390 nuclei can then match at most a quarter of them, so
what counts is *which* 100 come first: the ones most likely to be real and well outlined. Three
signals besides the classifier's score, each in [0, 1]:

* ``agreement``: how well the prediction passes agree on the nucleus: the mean, over the passes
  (plain and each test-time augmentation), of the best mask IoU with a detection of that pass,
  0 where a pass missed it;
* ``mask``: how sure the mask head was: the mean mask probability inside the mask
  (``Detections.mask_scores``; Mask Scoring R-CNN's argument that box confidence says little
  about mask quality);
* ``border``: 1 when the mask touches the image border (a cut nucleus), else 0.

A :class:`Recipe` combines them: ``score * agreement**a * mask**b * border_factor**border``, or,
for the ``learned-*`` recipes, replaces the score by a small model's estimate learned from the
validation predictions (:mod:`helpers.infer.ranking`; scored leave-one-image-out in the table).
:func:`compare_recipes` scores every recipe of ``RECIPES`` on the validation split and keeps one only if
it beats ``"none"`` on the chosen metric (:data:`LEADERBOARD_METRIC`, AP50@100, by default); the
table also shows AP@100 and AP@1000, so a recipe that trades real quality for leaderboard rank
says so. Notebook 04's choice record (:mod:`helpers.infer.choice`) carries the pick to notebooks 05 and 06.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from helpers.detections import Detections
from helpers.rle import rle_iou
from helpers.infer import ranking
from helpers.infer.evaluate import LEADERBOARD_METRIC
from helpers.errors import InvalidRequest, UserError


class RescoreError(UserError, ValueError):
    """A recipe needs a signal the predictions do not carry."""


@dataclass(frozen=True)
class Recipe:
    """``score * agreement**agreement * mask**mask * border_factor**(at border)``; or, when
    ``learned`` names a target of :mod:`helpers.infer.ranking`, the learned ranking's score."""

    name: str
    agreement: float = 0.0
    mask: float = 0.0
    border_factor: float = 1.0
    learned: str = ""

    @property
    def needs_passes(self) -> bool:
        return self.agreement > 0 or bool(self.learned)

    def describe(self) -> str:
        if self.learned:
            return ("learned P(IoU >= 0.5)" if self.learned == "match50" else "learned IoU") + " (leave-one-image-out)"
        parts = ["score"]
        if self.agreement:
            parts.append("agreement" + (f"^{self.agreement:g}" if self.agreement != 1 else ""))
        if self.mask:
            parts.append("mask" + (f"^{self.mask:g}" if self.mask != 1 else ""))
        if self.border_factor != 1:
            parts.append(f"({self.border_factor:g} at the border)")
        return " x ".join(parts)


RECIPES = {r.name: r for r in (
    Recipe("none"),
    Recipe("agreement", agreement=1.0),
    Recipe("mask", mask=1.0),
    Recipe("border", border_factor=0.5),
    Recipe("agreement+mask", agreement=1.0, mask=1.0),
    Recipe("agreement^2+mask", agreement=2.0, mask=1.0),
    Recipe("agreement+mask+border", agreement=1.0, mask=1.0, border_factor=0.5),
    Recipe("learned-match50", learned="match50"),
    Recipe("learned-iou", learned="iou"),
)}


# --------------------------------------------------------------------------- signals
def agreement(dets: Detections, passes: Sequence[Detections]) -> np.ndarray:
    """Mean over ``passes`` of each detection's best mask IoU with that pass (0 if none)."""
    if not passes:
        raise RescoreError("agreement needs the prediction passes (plain + test-time augmentations)")
    out = np.zeros(len(dets))
    if not len(dets):
        return out
    for p in passes:
        if p.size != dets.size:
            raise RescoreError(f"a pass has image size {p.size}, the detections {dets.size}")
        if len(p):
            out += np.asarray(rle_iou(dets.rles, p.rles)).reshape(len(dets), len(p)).max(axis=1)
    return out / len(passes)


def at_border(dets: Detections) -> np.ndarray:
    """1.0 where a mask touches the image border, else 0.0."""
    if not len(dets):
        return np.zeros(0)
    x, y, w, h = dets.boxes.T
    H, W = dets.size
    return ((x <= 0) | (y <= 0) | (x + w >= W) | (y + h >= H)).astype(np.float64)


def signals(dets: Detections, passes: Sequence[Detections] | None = None) -> dict[str, np.ndarray]:
    """The signals available for ``dets``: border always, mask and agreement when possible."""
    out = {"border": at_border(dets)}
    if dets.mask_scores is not None:
        out["mask"] = np.clip(dets.mask_scores, 0.0, 1.0)
    if passes:
        out["agreement"] = agreement(dets, passes)
    return out


def apply(recipe: Recipe | str, dets: Detections, passes: Sequence[Detections] | None = None,
          sig: Mapping[str, np.ndarray] | None = None, ranker: ranking.Ranker | None = None) -> Detections:
    """``dets`` rescored by ``recipe`` (a learned one by ``ranker``) and sorted by the new score."""
    recipe = RECIPES[recipe] if isinstance(recipe, str) else recipe
    if not len(dets):
        return dets
    sig = sig if sig is not None else signals(dets, passes if recipe.needs_passes else None)
    if recipe.learned:
        if ranker is None or ranker.target != recipe.learned:
            raise RescoreError(f"recipe {recipe.name!r} needs its learned ranking "
                               f"({ranking.RANKING_FILE}, written by notebook 04)")
        return ranker.rescore(dets, sig)
    score = dets.scores.copy()
    if recipe.agreement:
        if "agreement" not in sig:
            raise RescoreError(f"recipe {recipe.name!r} needs the prediction passes (use test-time "
                               "augmentation in notebook 04 and 05)")
        score *= sig["agreement"] ** recipe.agreement
    if recipe.mask:
        if "mask" not in sig:
            raise RescoreError(f"recipe {recipe.name!r} needs mask scores; these predictions were "
                               "cached without them: delete the workspace's predictions/ folder "
                               "and predict again")
        score *= sig["mask"] ** recipe.mask
    if recipe.border_factor != 1:
        score *= recipe.border_factor ** sig["border"]
    return dets.with_scores(score).sorted()


def apply_all(recipe: Recipe | str, preds: Mapping[str, Detections],
              passes: Mapping[str, Sequence[Detections]] | None = None,
              ranker: ranking.Ranker | None = None) -> dict[str, Detections]:
    """:func:`apply` to every image of ``preds`` (``passes``: {image_id: [Detections, ...]})."""
    return {i: apply(recipe, d, (passes or {}).get(i), ranker=ranker) for i, d in preds.items()}


# --------------------------------------------------------------------------- choosing one
@dataclass
class RescoreComparison:
    rows: list[dict]           # one per recipe: name, formula, the metrics
    best: str                  # best by ``metric`` ("none" unless a recipe beats it)
    metric: str
    chosen: str
    ceiling: dict              # what perfect masks score on this split (helpers.infer.evaluate.ceiling)
    # the learned ranking's rows: ({image_id: features}, {image_id: match IoU}), or None
    learning_rows: tuple | None = None
    # each learned recipe's leave-one-image-out scores, as the table scored them
    loo_scores: dict = field(default_factory=dict)

    def ranker(self) -> ranking.Ranker | None:
        """The chosen learned ranking fit on every validation image (None for a hand recipe)."""
        target = RECIPES[self.chosen].learned
        return ranking.fit(target, *self.learning_rows) if target else None

    def on_validation(self, preds: Mapping[str, Detections],
                      passes: Mapping[str, Sequence[Detections]] | None = None) -> dict[str, Detections]:
        """The validation predictions rescored by the chosen recipe as the table scored them (a
        learned one leave-one-image-out: no image is scored by a model that saw it)."""
        if not RECIPES[self.chosen].learned:
            return apply_all(self.chosen, preds, passes)
        return _with_scores(preds, self.loo_scores[self.chosen])

    def report(self):
        from helpers.tables import Report, Table

        parts = [Table([{**r, "pick": "<- chosen" if r["recipe"] == self.chosen else ""} for r in self.rows])]
        parts.append("ceiling (perfect masks): " + "  ".join(f"{k} {v:.4f}" for k, v in self.ceiling.items()
                                                             if k.startswith("AP@")))
        base = next(r for r in self.rows if r["recipe"] == "none")
        chosen = next(r for r in self.rows if r["recipe"] == self.chosen)
        if self.chosen != "none":
            parts.append(f"{self.chosen}: {self.metric} {base[self.metric]:.4f} -> {chosen[self.metric]:.4f}"
                         + _tradeoff(base, chosen, self.metric))
        else:
            parts.append(f"no recipe beats the classifier's score on {self.metric}: keeping it")
        return Report(parts)

    def format(self) -> str:
        return str(self.report())


def _tradeoff(base: Mapping, chosen: Mapping, metric: str) -> str:
    other = "AP@1000" if metric != "AP@1000" else "AP@100"
    if other in base and chosen[other] < base[other]:
        return f"; it costs {other} ({base[other]:.4f} -> {chosen[other]:.4f})"
    return ""


def compare_recipes(preds: Mapping[str, Detections], ground_truth: Mapping,
            passes: Mapping[str, Sequence[Detections]] | None = None, metric: str = LEADERBOARD_METRIC,
            recipes: Sequence[str] | None = None, choice: str = "") -> RescoreComparison:
    """Each recipe's validation metrics; the best is kept only if it beats ``"none"``. A learned
    recipe scores each image with a model fit on the other images (no leakage)."""
    from helpers.infer.evaluate import ceiling, evaluate

    names = list(recipes or RECIPES)
    if "none" not in names:
        names.insert(0, "none")
    sig = {i: signals(d, (passes or {}).get(i)) for i, d in preds.items()}
    rows_of_learning = None
    loo_scores = {}
    rows = []
    for name in names:
        recipe = RECIPES[name]
        try:
            if recipe.learned:
                rows_of_learning = rows_of_learning or learning_rows(preds, sig, ground_truth)
                new = loo_scores[name] = ranking.leave_one_image_out(recipe.learned, *rows_of_learning)
                rescored = _with_scores(preds, new)
            else:
                rescored = {i: apply(recipe, d, sig=sig[i]) for i, d in preds.items()}
        except (RescoreError, ranking.RankingError):
            continue  # a signal these predictions lack (e.g. no TTA passes), or too few images
        summary = evaluate(rescored, ground_truth, per_image=False).summary
        rows.append({"recipe": name, "formula": recipe.describe(), **summary})
    top = ceiling(ground_truth)
    if metric not in rows[0]:
        raise InvalidRequest(f"metric {metric!r} unknown; use one of {[k for k in rows[0] if k.startswith('AP')]}")
    for r in rows:
        r[f"% of ceiling {metric}"] = 100.0 * r[metric] / top[metric] if top[metric] > 0 else float("nan")
    base = rows[0][metric]
    best = max(rows, key=lambda r: (r[metric] > base, r[metric]))["recipe"]
    if choice and choice not in {r["recipe"] for r in rows}:
        raise RescoreError(f"rescoring {choice!r} is not in the table; use one of "
                           f"{[r['recipe'] for r in rows]}")
    return RescoreComparison(rows, best, metric, choice or best, top, rows_of_learning, loo_scores)


def _with_scores(preds: Mapping[str, Detections], scores: Mapping[str, np.ndarray]) -> dict[str, Detections]:
    return {i: d.with_scores(scores[i]).sorted() if len(d) else d for i, d in preds.items()}


def learning_rows(preds: Mapping[str, Detections], sig: Mapping[str, Mapping],
                  ground_truth: Mapping) -> tuple[dict, dict]:
    """The learned ranking's rows: each validation image's features and match IoU."""
    from helpers.infer.evaluate import gt_rles

    X = {i: ranking.features(d, sig[i]) for i, d in preds.items()}
    match = {i: ranking.match_iou(d, gt_rles(ground_truth[i], i)) for i, d in preds.items()}
    return X, match
