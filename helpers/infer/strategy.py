"""Ensemble strategies: one typed class per way of turning several models' predictions into one
prediction per image, and their comparison on the validation split.

* :class:`Single`: one model's predictions as they are;
* :class:`Route`: each image from the model a :class:`~helpers.infer.routing.Router` names;
* :class:`Merge`: every model's detections of an image fused by mask IoU
  (:func:`helpers.infer.fusion.merge_detections`, ``nms`` or ``wmf``).

:func:`compare_strategies` scores them side by side (COCO AP and the field's AJI, PQ, F1@0.5);
the best by the chosen metric is picked, ``StrategyComparison.choose(name)`` overrides it.
``Strategy.to_json`` / :func:`strategy_from_json` carry one into notebook 04's choice record
(:mod:`helpers.infer.choice`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import ClassVar, Mapping, Sequence

import numpy as np

from helpers.detections import Detections
from helpers.infer.evaluate import LEADERBOARD_METRIC
from helpers.infer.fusion import MERGE_METHODS, merge_detections
from helpers.infer.routing import PerModel, Router, route
from helpers.errors import InvalidRequest, UserError


class EnsembleError(UserError, ValueError):
    """Predictions needed by an ensemble are missing or do not fit together, or a saved
    strategy cannot be read."""


@dataclass(frozen=True)
class Strategy:
    """A way to turn per-model predictions into one prediction per image (one subclass per kind)."""

    name: str
    models: tuple[str, ...]
    kind: ClassVar[str] = ""

    def apply(self, per_model: PerModel, image_ids: Sequence[str] | None = None) -> dict[str, Detections]:
        """``{image_id: Detections}`` for ``image_ids`` (default: every image the models predicted)."""
        missing_models = [m for m in self.models if m not in per_model]
        if missing_models:
            raise EnsembleError(f"strategy {self.name!r} needs predictions of model(s) {missing_models}; "
                                f"have {sorted(per_model)}")
        if image_ids is None:
            image_ids = sorted({i for m in self.models for i in per_model[m]})
        return self._apply(per_model, list(image_ids))

    def _apply(self, per_model: PerModel, image_ids: list[str]) -> dict[str, Detections]:
        raise NotImplementedError

    def describe(self) -> str:
        return f"{self.name} ({self.kind}: {', '.join(self.models)})"

    def to_json(self) -> dict:
        return {"kind": self.kind, **{f.name: _plain(getattr(self, f.name)) for f in fields(self)}}


@dataclass(frozen=True)
class Single(Strategy):
    """One model's predictions."""

    kind: ClassVar[str] = "single"

    def __post_init__(self):
        if len(self.models) != 1:
            raise EnsembleError(f"a single-model strategy takes one model, not {list(self.models)}")

    def _apply(self, per_model, image_ids):
        return route(per_model, Router(default=self.models[0]), image_ids)


@dataclass(frozen=True)
class Route(Strategy):
    """Each image from the model the route table names."""

    router: Router = field(default_factory=Router)
    kind: ClassVar[str] = "route"

    def _apply(self, per_model, image_ids):
        return route(per_model, self.router, image_ids)


@dataclass(frozen=True)
class Merge(Strategy):
    """Every model's detections of an image, fused by mask IoU (``method``: nms or wmf)."""

    method: str = "wmf"
    iou_threshold: float = 0.5
    max_dets: int | None = None
    kind: ClassVar[str] = "merge"

    def __post_init__(self):
        if self.method not in MERGE_METHODS:
            raise EnsembleError(f"merge method {self.method!r} unknown; use one of {MERGE_METHODS}")

    def _apply(self, per_model, image_ids):
        out = {}
        for image_id in image_ids:
            lacking = [m for m in self.models if image_id not in per_model[m]]
            if lacking:
                raise EnsembleError(f"merge {self.name!r}: model(s) {lacking} have no prediction for "
                                    f"{image_id!r}; predict it first")
            out[image_id] = merge_detections([per_model[m][image_id] for m in self.models],
                                             self.method, self.iou_threshold, max_dets=self.max_dets)
        return out


KINDS: dict[str, type[Strategy]] = {c.kind: c for c in (Single, Route, Merge)}


def _plain(value):
    """A field's value as JSON: tuples as lists, a Router as its table."""
    if isinstance(value, Router):
        return {"default": value.default, "by_organ": dict(value.by_organ), "by_image": dict(value.by_image),
                "organs": value.organs}
    return list(value) if isinstance(value, tuple) else value


def strategy_from_json(obj: Mapping) -> Strategy:
    """The strategy ``Strategy.to_json`` wrote; EnsembleError if ``obj`` is not one."""
    try:
        cls = KINDS[obj["kind"]]
        kw = {f.name: obj[f.name] for f in fields(cls) if f.name in obj}
        kw["models"] = tuple(kw["models"])
        if cls is Route:
            r = obj["router"]
            kw["router"] = Router(r.get("default"), dict(r.get("by_organ") or {}), dict(r.get("by_image") or {}),
                                  r.get("organs"))
        return cls(**kw)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise EnsembleError(f"not a saved ensemble strategy ({type(e).__name__}: {e})") from None


def default_strategies(models: Sequence[str], router: Router | None = None,
                       methods: Sequence[str] = MERGE_METHODS, iou_threshold: float = 0.5,
                       max_dets: int | None = None) -> list[Strategy]:
    """Each model alone, the route (if a router is given), and merge of all models per method."""
    out: list[Strategy] = [Single(m, (m,)) for m in models]
    if router is not None:
        router.check(models)
        out.append(Route("route", tuple(sorted(router.models())), router=router))
    if len(models) > 1:
        out += [Merge(f"merge-{method}", tuple(models), method=method, iou_threshold=iou_threshold,
                      max_dets=max_dets) for method in methods]
    return out


@dataclass
class StrategyComparison:
    rows: list[dict]
    strategies: dict[str, Strategy]
    results: dict = field(repr=False)
    metric: str
    best: str
    chosen: str

    def choose(self, name: str) -> Strategy:
        """Override the pick (``name`` as in the table)."""
        if name not in self.strategies:
            raise EnsembleError(f"no strategy named {name!r}; choose one of {list(self.strategies)}")
        self.chosen = name
        return self.strategies[name]

    @property
    def strategy(self) -> Strategy:
        return self.strategies[self.chosen]

    def report(self):
        from helpers.tables import Report, Table

        rows = [{**r, "pick": ("<- chosen" if r["strategy"] == self.chosen else "")
                 + (" (best)" if r["strategy"] == self.best else "")} for r in self.rows]
        return Report([f"ranked by {self.metric}", Table(rows)])

    def format(self) -> str:
        return str(self.report())


def compare_strategies(per_model: PerModel, ground_truth: Mapping, router: Router | None = None,
                       strategies: Sequence[Strategy] | None = None, metric: str = LEADERBOARD_METRIC,
                       max_dets: Sequence[int] = (100, 1000), progress: bool = True) -> StrategyComparison:
    """Evaluate single models, route and merge on the validation ground truth: COCO AP and the
    field's AJI, PQ and F1@0.5 (``helpers.infer.instance_metrics``); the best by ``metric`` (a
    column of the table) is ``best`` and ``chosen``."""
    from helpers.progress import tqdm

    from helpers.infer.evaluate import evaluate
    from helpers.infer.instance_metrics import TABLE_COLUMNS, score_images

    if strategies is None:
        strategies = default_strategies(list(per_model), router)
    image_ids = sorted(ground_truth)
    rows, results = [], {}
    for s in tqdm(strategies, desc="ensembles", disable=not progress):
        preds = s.apply(per_model, image_ids)
        res = evaluate(preds, ground_truth, max_dets=max_dets, per_image=False)
        field_scores = score_images(preds, ground_truth).summary
        results[s.name] = res
        rows.append({"strategy": s.name, "kind": s.kind, "models": "+".join(s.models), **res.summary,
                     **{k: field_scores[k] for k in TABLE_COLUMNS}})
        if metric not in rows[-1] or metric in ("strategy", "kind", "models"):
            raise InvalidRequest(f"metric {metric!r} unknown; use one of {[*res.summary, *TABLE_COLUMNS]}")
    ranked = sorted(rows, key=lambda r: -np.nan_to_num(r[metric], nan=-1.0))
    best = ranked[0]["strategy"]
    return StrategyComparison(ranked, {s.name: s for s in strategies}, results, metric, best, best)
