"""A learned ranking: a small scikit-learn model scores each detection from what the predictions
say about it, so that each image's top 100 (the leaderboard's ``maxDets``) hold true nuclei.

What decides AP50@100 is whether each of an image's first 100 detections matches a nucleus at
IoU >= 0.5. A gradient-boosted tree model (``HistGradientBoosting*``: it handles missing values,
needs no scaling and fits a few thousand rows in a second) learns that from validation
predictions and their ground truth, with the per-detection :data:`FEATURES`:

* ``score``: the classifier's confidence; ``mask``: the mask head's mean probability inside the
  mask; ``agreement``: how well the prediction passes agree (``helpers.infer.rescore``);
* ``log_area``, ``aspect`` (short / long box side) and ``solidity`` (mask area / convex hull
  area: a torn or merged mask is not convex);
* ``border``: distance in px from the box to the image border (a cut nucleus), capped at 64;
* ``density``: the summed score of the other detections whose centres lie within 32 px;
* ``overlap``: the best mask IoU with a higher-scoring detection (a duplicate scores 0 in COCO);
* ``rank``: the position in the image's score order, over 100.

Two targets: ``"match50"`` (a classifier of match IoU >= 0.5, the leaderboard's question) and
``"iou"`` (a regressor of the match IoU, which AP at 0.5:0.95 also rewards).

**No leakage.** On validation, :func:`leave_one_image_out` scores each image with a model fit on
the other images only; that is what notebook 04's table compares with the hand recipes. The
model notebook 05 applies is fit on every validation image (:func:`fit`). It is stored as its
training rows and settings (``ranking.npz``, no pickle) and refit, deterministically, when loaded:
the same rows give the same trees on any scikit-learn version the runtime has.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from helpers.atomic import atomic_path
from helpers.detections import Detections
from helpers.rle import decode_crop, rle_area, rle_iou
from helpers.errors import UserError

FEATURES = ("score", "mask", "agreement", "log_area", "aspect", "solidity", "border", "density",
            "overlap", "rank")
TARGETS = ("match50", "iou")
RANKING_FILE = "ranking.npz"  # predictions/ranking.npz: the learned ranking notebook 04 chose
BORDER_CAP_PX = 64.0
DENSITY_RADIUS_PX = 32.0
# Small trees, strongly regularised: a few thousand rows from 3-4 images.
MODEL_PARAMS = {"max_iter": 150, "learning_rate": 0.05, "max_leaf_nodes": 15, "min_samples_leaf": 40,
                "l2_regularization": 1.0, "early_stopping": False, "random_state": 0}


class RankingError(UserError, ValueError):
    """A learned ranking cannot be fit or applied to these predictions."""


# --------------------------------------------------------------------------- features
def solidity(dets: Detections) -> np.ndarray:
    """Mask area / convex hull area of each detection's largest outline (1 = convex)."""
    import cv2

    out = np.ones(len(dets))
    for k, (rle, (x, y, w, h)) in enumerate(zip(dets.rles, dets.boxes)):
        y0, x0 = int(y), int(x)
        crop = decode_crop(rle, (y0, x0, y0 + int(np.ceil(h)) + 1, x0 + int(np.ceil(w)) + 1))
        contours, _ = cv2.findContours(np.pad(crop, 1).astype(np.uint8), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_SIMPLE)
        if not contours:
            out[k] = 0.0
            continue
        c = max(contours, key=cv2.contourArea)
        hull = cv2.contourArea(cv2.convexHull(c))
        out[k] = cv2.contourArea(c) / hull if hull > 0 else 0.0
    return out


def _density(centres: np.ndarray, scores: np.ndarray) -> np.ndarray:
    from scipy.spatial import cKDTree

    tree = cKDTree(centres)
    out = np.zeros(len(centres))
    for i, near in enumerate(tree.query_ball_point(centres, DENSITY_RADIUS_PX)):
        out[i] = scores[near].sum() - scores[i]
    return out


def _overlap_with_higher(dets: Detections) -> np.ndarray:
    """Best mask IoU with a detection ranked above (``dets`` in score order)."""
    order = np.argsort(-dets.scores, kind="stable")
    rles = [dets.rles[i] for i in order]
    out_sorted = np.zeros(len(rles))
    chunk = 1024
    for s in range(0, len(rles), chunk):
        e = min(len(rles), s + chunk)
        iou = np.asarray(rle_iou(rles[s:e], rles[:e])).reshape(e - s, e)
        iou[np.arange(e - s)[:, None] <= np.arange(e)[None, :] - s] = 0.0  # only those above
        out_sorted[s:e] = iou.max(axis=1) if e else 0.0
    out = np.empty(len(rles))
    out[order] = out_sorted
    return out


def features(dets: Detections, sig: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
    """``(len(dets), len(FEATURES))``; NaN where a signal is missing (``mask``/``agreement``)."""
    n = len(dets)
    X = np.full((n, len(FEATURES)), np.nan)
    if not n:
        return X
    sig = sig or {}
    col = {f: k for k, f in enumerate(FEATURES)}
    x, y, w, h = dets.boxes.T
    H, W = dets.size
    X[:, col["score"]] = dets.scores
    if "mask" in sig:
        X[:, col["mask"]] = sig["mask"]
    elif dets.mask_scores is not None:
        X[:, col["mask"]] = dets.mask_scores
    if "agreement" in sig:
        X[:, col["agreement"]] = sig["agreement"]
    X[:, col["log_area"]] = np.log1p(rle_area(dets.rles))
    X[:, col["aspect"]] = np.minimum(w, h) / np.maximum(np.maximum(w, h), 1e-6)
    X[:, col["solidity"]] = solidity(dets)
    X[:, col["border"]] = np.clip(np.minimum.reduce([x, y, W - (x + w), H - (y + h)]), 0, BORDER_CAP_PX)
    X[:, col["density"]] = _density(np.stack([x + w / 2, y + h / 2], axis=1), dets.scores)
    X[:, col["overlap"]] = _overlap_with_higher(dets)
    rank = np.empty(n)
    rank[np.argsort(-dets.scores, kind="stable")] = np.arange(n)
    X[:, col["rank"]] = rank / 100.0
    return X


def match_iou(dets: Detections, gt_rles: Sequence[dict]) -> np.ndarray:
    """Each detection's best mask IoU with a ground-truth nucleus (0 where none overlaps)."""
    if not len(dets) or not len(gt_rles):
        return np.zeros(len(dets))
    return np.asarray(rle_iou(dets.rles, list(gt_rles))).reshape(len(dets), len(gt_rles)).max(axis=1)


# --------------------------------------------------------------------------- the model
def _label(target: str, iou: np.ndarray) -> np.ndarray:
    return (iou >= 0.5).astype(int) if target == "match50" else iou


@dataclass
class Ranker:
    """A fitted learned ranking: ``target``, its training rows, the columns it uses."""

    target: str
    X: np.ndarray
    match: np.ndarray           # the training rows' match IoU
    columns: list[int]          # the features present in training (others are ignored)
    params: dict = field(default_factory=lambda: dict(MODEL_PARAMS))
    _model: object = field(default=None, repr=False)

    def __post_init__(self):
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

        if self.target not in TARGETS:
            raise RankingError(f"learned ranking target {self.target!r}: use one of {TARGETS}")
        y = _label(self.target, self.match)
        if self.target == "match50" and len(np.unique(y)) < 2:
            raise RankingError("the learned ranking needs both true and false detections to learn "
                               f"from; these predictions have only {'true' if y.any() else 'false'} ones")
        cls = HistGradientBoostingClassifier if self.target == "match50" else HistGradientBoostingRegressor
        self._model = cls(**self.params).fit(self.X[:, self.columns], y)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The new score of each row: P(match IoU >= 0.5), or the expected match IoU."""
        if not len(X):
            return np.zeros(0)
        Xc = X[:, self.columns]
        if self.target == "match50":
            return self._model.predict_proba(Xc)[:, 1]
        return np.clip(self._model.predict(Xc), 0.0, 1.0)

    def rescore(self, dets: Detections, sig: Mapping[str, np.ndarray] | None = None) -> Detections:
        return dets.with_scores(self.predict(features(dets, sig))).sorted() if len(dets) else dets


def fit(target: str, X: Mapping[str, np.ndarray], match: Mapping[str, np.ndarray]) -> Ranker:
    """A :class:`Ranker` fit on every image's rows (``{image_id: features}``, ``{image_id: match IoU}``)."""
    ids = [i for i in X if len(X[i])]
    if not ids:
        raise RankingError("the learned ranking has no detections to learn from")
    Xa = np.concatenate([X[i] for i in ids])
    ya = np.concatenate([match[i] for i in ids])
    columns = [k for k in range(Xa.shape[1]) if np.isfinite(Xa[:, k]).any()]
    return Ranker(target, Xa, ya, columns)


def leave_one_image_out(target: str, X: Mapping[str, np.ndarray],
                        match: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each image's new scores from a model fit on the *other* images only."""
    if len(X) < 2:
        raise RankingError(f"leave-one-image-out needs at least 2 validation images, not {len(X)}")
    return {i: fit(target, {j: X[j] for j in X if j != i}, {j: match[j] for j in X if j != i}).predict(X[i])
            for i in X}


# --------------------------------------------------------------------------- storage
def ranking_path(predictions_dir) -> Path:
    return Path(predictions_dir) / RANKING_FILE


def save(ranker: Ranker, path) -> Path:
    """Store ``ranker`` as its training rows and settings (``.npz``), atomically."""
    path = Path(path)
    meta = {"target": ranker.target, "columns": ranker.columns, "params": ranker.params,
            "features": list(FEATURES)}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, X=ranker.X, match=ranker.match, meta=np.array(json.dumps(meta)))
    return path


def load(path) -> Ranker:
    """The :class:`Ranker` stored by :func:`save`, refit from its rows."""
    path = Path(path)
    if not path.is_file():
        raise RankingError(f"{path} is missing: run notebook 04 again to learn the ranking")
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            X, match = z["X"], z["match"]
    except (OSError, ValueError, KeyError) as e:
        raise RankingError(f"{path} is not a learned ranking ({e}): run notebook 04 again") from e
    if meta.get("features") != list(FEATURES):
        raise RankingError(f"{path} was learned from other features ({meta.get('features')}): "
                           "run notebook 04 again")
    return Ranker(meta["target"], X, match, list(meta["columns"]), dict(meta["params"]))
