"""Glue for notebooks 04 and 05: predictions of several models, the route table, the choice.

The work itself lives in predict (running models), evaluate (COCO mAP), ensemble
(route / merge / compare) and submission (answer.json).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from helpers import ensemble
from helpers.coco_format import Detections
from helpers.predict import predict_stage, split_ids
from helpers.prepare import workspace_manifest
from helpers.workspace import Workspace, get_workspace

CHOICE_FILE = "ensemble.json"  # predictions/ensemble.json: the strategy notebook 04 chose
TTA_SUFFIX = "+tta"


def _ws(workspace) -> Workspace:
    return workspace if isinstance(workspace, Workspace) else get_workspace(workspace)


def choice_path(workspace) -> Path:
    return _ws(workspace).predictions / CHOICE_FILE


def model_predictions(workspace, models: Mapping[str, str] | Sequence[str], image_ids: Sequence[str],
                      tta: Sequence[str] = (), progress: bool = True, **kw) -> dict[str, dict[str, Detections]]:
    """``{name: {image_id: Detections}}`` for each model (a list of stages, or {name: stage}).

    With ``tta``, each model also appears as ``<name>+tta``: its plain and augmented
    predictions fused, so the comparison shows what test-time augmentation buys.
    All of it is cached per (model, image, augmentation).
    """
    if not isinstance(models, Mapping):
        models = {m: m for m in models}
    out = {}
    for name, stage in models.items():
        fused, parts = predict_stage(workspace, stage, list(image_ids), tta=tta, name=name,
                                     progress=progress, return_parts=True, **kw)
        out[name] = parts["plain"]
        if tta:
            out[name + TTA_SUFFIX] = fused
    return out


def make_router(workspace, per_model: Mapping, by_organ: Mapping[str, str] | None = None,
                by_image: Mapping[str, str] | None = None, default: str | None = None):
    """The route table (organ or image -> model name), checked against the models and the
    manifest; None when no table is given. ``default`` is the first model when unset."""
    if not by_organ and not by_image:
        return None
    router = ensemble.Router.from_manifest(workspace_manifest(_ws(workspace)),
                                           default=default or next(iter(per_model)),
                                           by_organ=by_organ, by_image=by_image)
    router.check(per_model)
    return router


def choose(workspace, comparison, choice: str = "", overwrite: bool = False):
    """Take the best strategy (or the user's ``choice``), save it for notebook 05, return it."""
    if choice:
        comparison.choose(choice)
    path = ensemble.save_strategy(comparison.strategy, choice_path(workspace), overwrite=overwrite)
    print(f"chosen: {comparison.chosen}" + (" (best on validation)" if comparison.chosen == comparison.best
                                              else f" (best was {comparison.best})") + f"; saved to {path}")
    return comparison.strategy


def chosen_test_predictions(workspace, tta: Sequence[str] = (), progress: bool = True, **kw):
    """Notebook 05: the saved strategy applied to the test images (predicting what is not cached)."""
    ws = _ws(workspace)
    strategy = ensemble.load_strategy(choice_path(ws))
    test_ids = split_ids(ws, "test")
    stages = _stages_of(ws, strategy.models)
    needs_tta = any(m.endswith(TTA_SUFFIX) for m in strategy.models)
    if needs_tta and not tta:
        raise ValueError(f"the chosen strategy {strategy.name!r} uses test-time augmentation: pass the same "
                         "tta as in notebook 04")
    per_model = model_predictions(ws, stages, test_ids, tta=tta if needs_tta else (), progress=progress, **kw)
    print(f"strategy {strategy.name!r} ({strategy.kind}: {', '.join(strategy.models)}) on {len(test_ids)} test images")
    return strategy.apply(per_model, test_ids)


def test_images(workspace):
    """The test images with their submission ids, from the dataset's test_img_ids.json."""
    from helpers.shards import load_index
    from helpers.submission import load_test_images

    return load_test_images(Path(load_index(_ws(workspace).shards)["dataset_root"]))


def _stages_of(ws: Workspace, names: Sequence[str]) -> dict[str, str]:
    """{model name: stage} for the names a strategy uses (a '+tta' name needs its base model)."""
    saved = {}
    for n in names:
        base = n[: -len(TTA_SUFFIX)] if n.endswith(TTA_SUFFIX) else n
        meta_stage = _cached_stage(ws, base)
        saved[base] = meta_stage or base
    return saved


def _cached_stage(ws: Workspace, name: str) -> str | None:
    """The stage a model name was predicted with in notebook 04 (from the cache's meta)."""
    from helpers.prediction_cache import PredictionCache

    cache = PredictionCache(ws.predictions)
    for key in cache.keys(name):
        try:
            return cache.load_meta(key).get("stage")
        except Exception:  # noqa: BLE001 - a bad file says nothing; try the next
            continue
    return None
