"""Ensembles of predictions: route, merge, and their comparison on validation mAP.

Joining a large image's tiles is :mod:`helpers.infer.tiling`'s work.

* **route** - a table maps each image to one model, either by organ (through the
  manifest, or ``helpers.data.organs.organ_of``) or by listing images: ``Router``.
* **merge** - pool the detections of several models and/or augmentations and fuse
  them by mask IoU: ``merge_detections(parts, method="nms" | "wmf", iou_threshold)``.
  ``nms`` keeps the best-scoring mask of each cluster; ``wmf`` (weighted mask
  fusion) votes pixels with the members' scores as weights and rescales the score
  by how many sources found the nucleus (like weighted box fusion).
* **compare** - single models vs route vs merge on validation mAP; picks the best,
  ``Comparison.choose(name)`` overrides. ``Strategy.apply`` replays the chosen
  strategy on the test predictions.

Mask IoU comes from pycocotools ``mask.iou`` on RLEs (it skips pairs whose boxes
do not overlap), in row chunks so memory stays bounded.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from helpers.detections import Detections
from helpers.rle import decode_crop, encode_crops, rle_iou
from helpers.infer.evaluate import LEADERBOARD_METRIC

PerModel = Mapping[str, Mapping[str, Detections]]  # {model: {image_id: Detections}}
MERGE_METHODS = ("nms", "wmf")
_CHUNK = 1024


class RouteError(ValueError):
    """A route table names an unknown model, image or organ, or leaves an image unrouted."""


class EnsembleError(ValueError):
    """Predictions needed by an ensemble are missing or do not fit together."""


# =========================================================================== route
def _manifest_organs(manifest) -> dict[str, str]:
    if isinstance(manifest, (str, os.PathLike)):
        from helpers.data.manifest import read_manifest

        manifest = read_manifest(manifest)
    return {str(r["image_id"]): str(r["organ"]) for r in manifest}


@dataclass
class Router:
    """Which model predicts which image.

    ``by_image`` wins over ``by_organ``, which wins over ``default``. ``organs``
    maps image ids to organs (``Router.from_manifest`` fills it from the manifest);
    without it organs come from the TCGA id (``helpers.data.organs.organ_of``).
    """

    default: str | None = None
    by_organ: dict[str, str] = field(default_factory=dict)
    by_image: dict[str, str] = field(default_factory=dict)
    organs: dict[str, str] | None = None

    @classmethod
    def from_manifest(cls, manifest, default: str | None = None, by_organ: Mapping[str, str] | None = None,
                      by_image: Mapping[str, str] | None = None) -> "Router":
        """``manifest``: rows of ``helpers.data.manifest.read_manifest`` or the CSV path."""
        router = cls(default, dict(by_organ or {}), dict(by_image or {}), _manifest_organs(manifest))
        known_organs = set(router.organs.values())
        bad = sorted(set(router.by_organ) - known_organs)
        if bad:
            raise RouteError(f"route table names organ(s) {bad} that no image in the manifest has; "
                             f"known organs: {sorted(known_organs)}")
        bad = sorted(set(router.by_image) - set(router.organs))
        if bad:
            raise RouteError(f"route table names image(s) {bad} that are not in the manifest")
        return router

    @classmethod
    def from_table(cls, table: Mapping[str, str], default: str | None = None) -> "Router":
        """A router that lists images explicitly: ``{image_id: model}``."""
        return cls(default=default, by_image=dict(table))

    def organ(self, image_id: str) -> str:
        if self.organs is not None:
            if image_id not in self.organs:
                raise RouteError(f"image {image_id!r} is not in the manifest, so its organ is unknown")
            return self.organs[image_id]
        from helpers.data.organs import organ_of

        return organ_of(image_id)

    def model_for(self, image_id: str) -> str:
        if image_id in self.by_image:
            return self.by_image[image_id]
        if self.by_organ:
            organ = self.organ(image_id)
            if organ in self.by_organ:
                return self.by_organ[organ]
        if self.default is None:
            raise RouteError(f"no model for image {image_id!r}: not listed, organ not routed, and no default")
        return self.default

    def models(self) -> set[str]:
        return {m for m in [self.default, *self.by_organ.values(), *self.by_image.values()] if m is not None}

    def table(self, image_ids: Iterable[str]) -> dict[str, str]:
        """``{image_id: model}`` for these images."""
        return {i: self.model_for(i) for i in image_ids}

    def check(self, models: Iterable[str], image_ids: Iterable[str] | None = None) -> None:
        """RouteError if the router names a model not in ``models``, or an image not in ``image_ids``."""
        models = set(models)
        bad = sorted(self.models() - models)
        if bad:
            raise RouteError(f"route table names unknown model(s) {bad}; available models: {sorted(models)}")
        if image_ids is not None and self.organs is None:
            bad = sorted(set(self.by_image) - set(image_ids))
            if bad:
                raise RouteError(f"route table names unknown image(s) {bad}")
        if self.by_organ and self.organs is None:
            from helpers.data.organs import ORGANS

            bad = sorted(set(self.by_organ) - set(ORGANS) - {"unknown"})
            if bad:
                raise RouteError(f"route table names unknown organ(s) {bad}; organs: {list(ORGANS)}")


def route(per_model: PerModel, router: Router | Mapping[str, str],
          image_ids: Sequence[str] | None = None) -> dict[str, Detections]:
    """``{image_id: Detections}`` taking each image from the model the router names.

    ``router`` may be a plain ``{image_id: model}`` table; then ``image_ids`` defaults
    to its keys and every table entry must name a known model and image.
    """
    if not isinstance(router, Router):
        table = dict(router)
        if image_ids is None:
            image_ids = list(table)
        router = Router.from_table(table)
    all_images = sorted({i for preds in per_model.values() for i in preds})
    if image_ids is None:
        image_ids = all_images
    router.check(per_model.keys(), image_ids)
    out = {}
    for image_id in image_ids:
        model = router.model_for(image_id)
        if image_id not in per_model[model]:
            raise RouteError(f"model {model!r} has no prediction for image {image_id!r} "
                             "(predict it first, or route the image to another model)")
        out[image_id] = per_model[model][image_id]
    return out


# =========================================================================== merge
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
        raise ValueError(f"merge method {method!r} unknown; use one of {MERGE_METHODS}")
    if not parts:
        raise EnsembleError("merge needs at least one set of detections")
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


# =========================================================================== strategies
@dataclass(frozen=True)
class Strategy:
    """A way to turn per-model predictions into one prediction per image."""

    name: str
    kind: str  # "single" | "route" | "merge"
    models: tuple[str, ...]
    router: Router | None = None
    method: str = "wmf"
    iou_threshold: float = 0.5
    max_dets: int | None = None

    def apply(self, per_model: PerModel, image_ids: Sequence[str] | None = None) -> dict[str, Detections]:
        missing_models = [m for m in self.models if m not in per_model]
        if missing_models:
            raise EnsembleError(f"strategy {self.name!r} needs predictions of model(s) {missing_models}; "
                                f"have {sorted(per_model)}")
        if image_ids is None:
            image_ids = sorted({i for m in self.models for i in per_model[m]})
        if self.kind == "single":
            return route(per_model, Router(default=self.models[0]), image_ids)
        if self.kind == "route":
            return route(per_model, self.router, image_ids)
        if self.kind == "merge":
            out = {}
            for image_id in image_ids:
                lacking = [m for m in self.models if image_id not in per_model[m]]
                if lacking:
                    raise EnsembleError(f"merge {self.name!r}: model(s) {lacking} have no prediction for "
                                        f"{image_id!r}; predict it first")
                out[image_id] = merge_detections([per_model[m][image_id] for m in self.models],
                                                 self.method, self.iou_threshold, max_dets=self.max_dets)
            return out
        raise ValueError(f"unknown strategy kind {self.kind!r}")


def strategy_to_json(strategy: Strategy) -> dict:
    r = strategy.router
    return {"name": strategy.name, "kind": strategy.kind, "models": list(strategy.models),
            "method": strategy.method, "iou_threshold": strategy.iou_threshold, "max_dets": strategy.max_dets,
            "router": None if r is None else {"default": r.default, "by_organ": dict(r.by_organ),
                                              "by_image": dict(r.by_image), "organs": r.organs}}


def strategy_from_json(obj: Mapping) -> Strategy:
    try:
        r = obj.get("router")
        router = None if r is None else Router(r.get("default"), dict(r.get("by_organ") or {}),
                                               dict(r.get("by_image") or {}), r.get("organs"))
        return Strategy(str(obj["name"]), str(obj["kind"]), tuple(obj["models"]), router,
                        str(obj.get("method", "wmf")), float(obj.get("iou_threshold", 0.5)), obj.get("max_dets"))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise EnsembleError(f"not a saved ensemble strategy ({type(e).__name__}: {e})") from None


def save_strategy(strategy: Strategy, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Record the chosen strategy (notebook 04) for the submission (notebook 05), atomically.
    An existing file with a different strategy is kept unless ``overwrite``."""
    from helpers.atomic import atomic_write_json

    path = Path(path)
    obj = strategy_to_json(strategy)
    if path.exists() and not overwrite:
        try:
            same = json.loads(path.read_text(encoding="utf-8")) == json.loads(json.dumps(obj))
        except ValueError:
            same = False
        if not same:
            raise FileExistsError(f"{path} already records another ensemble choice; pass overwrite=True "
                                  "to replace it")
        return path
    return atomic_write_json(path, obj)


def load_strategy(path: str | os.PathLike) -> Strategy:
    path = Path(path)
    if not path.is_file():
        raise EnsembleError(f"{path} not found; run notebook 04 (evaluate + choose) first")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise EnsembleError(f"{path} is not valid JSON ({e}); re-run notebook 04 to write it again") from None
    return strategy_from_json(obj)


def default_strategies(models: Sequence[str], router: Router | None = None,
                       methods: Sequence[str] = MERGE_METHODS, iou_threshold: float = 0.5,
                       max_dets: int | None = None) -> list[Strategy]:
    """Each model alone, the route (if a router is given), and merge of all models per method."""
    out = [Strategy(m, "single", (m,)) for m in models]
    if router is not None:
        router.check(models)
        out.append(Strategy("route", "route", tuple(sorted(router.models())), router=router))
    if len(models) > 1:
        for method in methods:
            out.append(Strategy(f"merge-{method}", "merge", tuple(models), method=method,
                                iou_threshold=iou_threshold, max_dets=max_dets))
    return out


@dataclass
class Comparison:
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

    def format(self) -> str:
        from helpers.infer.evaluate import format_table

        rows = [{**r, "pick": ("<- chosen" if r["strategy"] == self.chosen else "")
                 + (" (best)" if r["strategy"] == self.best else "")} for r in self.rows]
        return f"ranked by {self.metric}\n" + format_table(rows)


def compare(per_model: PerModel, ground_truth: Mapping, router: Router | None = None,
            strategies: Sequence[Strategy] | None = None, metric: str = LEADERBOARD_METRIC,
            max_dets: Sequence[int] = (100, 1000), progress: bool = True) -> Comparison:
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
            raise ValueError(f"metric {metric!r} unknown; use one of {[*res.summary, *TABLE_COLUMNS]}")
    ranked = sorted(rows, key=lambda r: -np.nan_to_num(r[metric], nan=-1.0))
    best = ranked[0]["strategy"]
    return Comparison(ranked, {s.name: s for s in strategies}, results, metric, best, best)
