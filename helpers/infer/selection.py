"""Glue for notebooks 04 and 05: predictions of several models, the route table, the choice.

The work itself lives in predict (running models), evaluate (COCO mAP), routing, fusion and
strategy (route / merge / compare), rescore (ranking for the leaderboard), choice (the record
notebook 04 writes and 05 reads) and submission (answer.json).
"""
from __future__ import annotations

import math

import warnings
from typing import Mapping, Sequence

from helpers.errors import InvalidRequest
from helpers.tables import show
from helpers.detections import Detections
from helpers.data.manifest import workspace_manifest
from helpers.infer import choice as choice_record
from helpers.infer import rescore, thresholds
from helpers.infer.evaluate import LEADERBOARD_METRIC
from helpers.infer.instance_metrics import TABLE_COLUMNS
from helpers.infer.predict import image_ids_of, predict_stage
from helpers.infer.routing import Router
from helpers.infer.tta import TTA_SUFFIX, base_model
from helpers.workspace import Workspace, as_workspace


def model_stages(models: Mapping[str, str] | Sequence[str]) -> dict[str, str]:
    """``{model name: stage}`` from notebook 04's ``models`` (a list of stages, or that mapping)."""
    return dict(models) if isinstance(models, Mapping) else {m: m for m in models}


def model_predictions(workspace, models: Mapping[str, str] | Sequence[str], image_ids: Sequence[str],
                      tta: Sequence[str] = (), progress: bool = True, **kw) -> dict[str, dict[str, Detections]]:
    """``{name: {image_id: Detections}}`` for each model (a list of stages, or {name: stage}).

    With ``tta``, each model also appears as ``<name>+tta``: its plain and augmented
    predictions fused, so the comparison shows what test-time augmentation buys.
    All of it is cached per (model, image, augmentation).
    """
    models = model_stages(models)
    _refuse_final_on_validation(workspace, models, image_ids)
    _refuse_trained_on_validation(workspace, models, image_ids)
    out = {}
    for name, stage in models.items():
        fused, parts = predict_stage(workspace, stage, list(image_ids), tta=tta, name=name,
                                     progress=progress, return_parts=True, **kw)
        out[name] = parts["plain"]
        if tta:
            out[name + TTA_SUFFIX] = fused
        if not any(len(d) for d in fused.values()):
            warnings.warn(found_nothing_note(name, stage, len(image_ids), kw.get("score_threshold", 0.05)),
                          FoundNothing, stacklevel=2)
    return out


class FoundNothing(UserWarning):
    """A model detected no nucleus in any image it was asked about."""


def found_nothing_note(name: str, stage: str, n_images: int, score_threshold: float) -> str:
    return (f"model {name!r} (stage {stage!r}) found no nucleus in any of the {n_images} images at "
            f"score_threshold {score_threshold}: its AP is 0 and any choice made with it means nothing. "
            f"It is undertrained: train stage {stage!r} for more steps (notebooks 02/03), or lower "
            "score_threshold here and in notebook 05.")


def make_router(workspace, per_model: Mapping, by_organ: Mapping[str, str] | None = None,
                by_image: Mapping[str, str] | None = None, default: str | None = None):
    """The route table (organ or image -> model name), checked against the models and the
    manifest; None when no table is given. ``default`` is the first model when unset."""
    if not by_organ and not by_image:
        return None
    router = Router.from_manifest(workspace_manifest(as_workspace(workspace)),
                                  default=default or next(iter(per_model)), by_organ=by_organ, by_image=by_image)
    router.check(per_model)
    return router


def choose(comparison, choice: str = ""):
    """The best strategy on validation, or the user's ``choice`` (a name from the table)."""
    if choice:
        comparison.choose(choice)
    score = next((r.get(comparison.metric) for r in comparison.rows if r["strategy"] == comparison.chosen), None)
    if score is not None and not math.isfinite(float(score)):
        raise InvalidRequest(f"{comparison.metric} is undefined (nan) for {comparison.chosen!r} on validation, so "
                             "nothing can be chosen by it: the validation images hold no nucleus it can be measured "
                             "on. Check the validation split (n_val / val_ids in notebook 01: images with nuclei), or "
                             "choose by another metric; nothing was saved.")
    if score is not None and float(score) == 0.0:
        warnings.warn(f"the chosen strategy {comparison.chosen!r} scores {comparison.metric} 0 on validation: no "
                      "model found a nucleus that matches the ground truth, so this choice means nothing. The "
                      "models are undertrained: train them for more steps (notebooks 02/03) and run this "
                      "notebook again.", FoundNothing, stacklevel=2)
    print(f"chosen: {comparison.chosen}" + (" (best on validation)" if comparison.chosen == comparison.best
                                              else f" (best was {comparison.best})"))
    return comparison.strategy


def prediction_passes(workspace, strategy, image_ids: Sequence[str], stages: Mapping[str, str],
                      tta: Sequence[str] = (), progress: bool = False, **kw) -> dict[str, list[Detections]]:
    """``{image_id: [Detections, ...]}``: every pass (plain and each of ``tta``) of every model
    the strategy uses (``stages``: {model: stage}), for rescoring by agreement. From the
    prediction cache when it is there."""
    ws = as_workspace(workspace)
    if strategy.kind == "route":  # each image: the passes of the model it is routed to
        users = {i: {base_model(strategy.router.model_for(i))} for i in image_ids}
    else:
        users = {i: {base_model(m) for m in strategy.models} for i in image_ids}
    out: dict[str, list[Detections]] = {i: [] for i in image_ids}
    for name in sorted({base_model(m) for m in strategy.models}):
        stage = stages[name]
        ids = [i for i in image_ids if name in users[i]]
        if not ids:
            continue
        _, parts = predict_stage(ws, stage, ids, tta=tta, name=_cache_name(name, stage),
                                 progress=progress, return_parts=True, **kw)
        for preds in parts.values():
            for i in ids:
                out[i].append(preds[i])
    return out


def rescoring(workspace, models, strategy, val_preds: Mapping[str, Detections], ground_truth: Mapping,
              tta: Sequence[str] = (), metric: str = LEADERBOARD_METRIC, choice: str = "", **kw):
    """Notebook 04: every rescoring recipe on validation, the best kept (only if it wins on
    ``metric``); returns ``(comparison, rescored val_preds)``. Rescoring decides a ranking, so a
    segmentation metric (AJI, PQ, F1@0.5) chooses it by the leaderboard's AP50@100 instead."""
    if metric in TABLE_COLUMNS:
        print(f"rescoring ranks detections: chosen by {LEADERBOARD_METRIC}, not {metric}")
        metric = LEADERBOARD_METRIC
    passes = prediction_passes(workspace, strategy, list(val_preds), model_stages(models), tta, **kw)
    cmp = rescore.compare_recipes(val_preds, ground_truth, passes, metric=metric, choice=choice)
    show(cmp.report())
    return cmp, cmp.on_validation(val_preds, passes)


def choose_segmentation(val_preds: Mapping[str, Detections], ground_truth: Mapping,
                        metric: str = thresholds.DEFAULT_EXPORT_METRIC,
                        min_score: float | None = None) -> thresholds.RuleChoice:
    """Notebook 04: the exports' segmentation rule (score threshold, overlap cuts), chosen on the
    validation predictions as rescored (the scores notebooks 05 and 06 will cut) by ``metric``;
    ``min_score`` (a number) fixes the threshold instead, and the curve still shows what it costs."""
    grid = thresholds.THRESHOLDS if min_score is None else sorted({*thresholds.THRESHOLDS, float(min_score)})
    chosen = thresholds.choose_rule(val_preds, ground_truth, metric, thresholds=grid,
                                    fixed=min_score)
    show(chosen.report())
    return chosen


def save_choice(workspace, models, comparison, rescoring, tta: Sequence[str] = (),
                overwrite: bool = False, segmentation: thresholds.RuleChoice | None = None,
                stain: str = "none") -> choice_record.Choice:
    """Notebook 04's one record for notebooks 05 and 06 (``predictions/choice.json``): the chosen
    strategy, the stage of each model it uses, the rescoring, ``tta``, the ``stain`` normalisation
    the predictions were made with and the exports' ``segmentation`` rule."""
    ws = as_workspace(workspace)
    strategy, stages = comparison.strategy, model_stages(models)
    tables = {"strategies": comparison.rows, "rescoring": rescoring.rows}
    if segmentation is not None:
        tables["segmentation"] = {"curve": segmentation.curve, "cuts": segmentation.cuts}
    record = choice_record.Choice(
        strategy, {m: stages[m] for m in sorted({base_model(n) for n in strategy.models})},
        rescore.RECIPES[rescoring.chosen], tuple(tta), comparison.metric, tables,
        segmentation.rule if segmentation else None, segmentation.metric if segmentation else "", stain)
    path = choice_record.save_choice(ws.predictions, record, rescoring.ranker(), overwrite=overwrite)
    print(f"saved to {path}: {record.describe()}")
    return record


def _require_test_images(ws) -> None:
    if not image_ids_of(ws, "test"):
        raise InvalidRequest(f"the dataset of {ws.root} has no test images (your own annotations have none): "
                             "notebook 05 writes the course's submission for its test images. Predict your own "
                             "images with notebook 06 (source: a folder, zip or Drive link of them).")


def chosen_test_predictions(workspace, tta: Sequence[str] | None = None, progress: bool = True,
                            use_final: bool = False, **kw):
    """Notebook 05: notebook 04's choice (strategy and rescoring) applied to the test images,
    predicting what is not cached. ``tta``: None takes the choice's; a list must match it.
    ``use_final``: the ``final`` stage (all labelled images) stands in for ``all`` wherever the
    strategy uses it. Every pass is predicted with the stain normalisation notebook 04 chose with."""
    ws = as_workspace(workspace)
    _require_test_images(ws)
    chosen = choice_record.load_choice(ws.predictions)
    kw = {**kw, "stain": chosen.stain}
    if tta is not None and chosen.uses_tta and list(tta) != list(chosen.tta):
        raise InvalidRequest(f"notebook 04 chose {chosen.strategy.name!r} with rescoring {chosen.recipe.name!r} "
                             f"measured with tta = {list(chosen.tta)}: use the same here (got {list(tta)}), or "
                             "tta = None to take it from the choice")
    test_ids = image_ids_of(ws, "test")
    tta = chosen.tta if chosen.uses_tta else ()
    stages = _with_final(ws, chosen.stages) if use_final else dict(chosen.stages)
    per_model = {}
    for name, stage in stages.items():
        cached = _cache_name(name, stage)
        preds = model_predictions(ws, {cached: stage}, test_ids, tta=tta, progress=progress, **kw)
        per_model.update({name + k[len(cached):]: v for k, v in preds.items()})
    strategy, recipe = chosen.strategy, chosen.recipe
    print(f"strategy {strategy.describe()} on {len(test_ids)} test images"
          + (f", with {stages}" if use_final else "") + f"; rescoring {recipe.name!r}")
    preds = strategy.apply(per_model, test_ids)
    if recipe.name == "none":
        return preds
    passes = prediction_passes(ws, strategy, test_ids, stages, tta, **kw) if recipe.needs_passes else None
    return rescore.apply_all(recipe, preds, passes, ranker=choice_record.load_ranker(ws.predictions, recipe))


def export_rule(workspace, min_score: float | None = None):
    """Notebooks 05 and 06: the segmentation rule of the exports, notebook 04's choice unless
    ``min_score`` (a number) sets the threshold here; says which it is."""
    chosen = choice_record.load_choice(as_workspace(workspace).predictions, required=False)
    rule, source = choice_record.export_rule(chosen, min_score)
    print(f"exports keep: {rule.describe()} ({source})")
    return rule


def _refuse_final_on_validation(workspace, models: Mapping[str, str], image_ids: Sequence[str]) -> None:
    from helpers.train.config import FINAL_STAGE

    if FINAL_STAGE in models.values() and set(image_ids) & set(image_ids_of(as_workspace(workspace), "val")):
        raise InvalidRequest(f"stage {FINAL_STAGE!r} was trained on the validation images, so it would win "
                             "any comparison on them: leave it out of notebook 04's models and set "
                             "final_model = True in notebook 05 instead")


def trained_on(workspace, stage: str) -> set[str]:
    """The image ids whose shards a stage trained on (its record's input files)."""
    from helpers.data.shards import image_ids_of_files
    from helpers.train.stages import read_stage_info

    ws = as_workspace(workspace)
    info = read_stage_info(ws, stage) or {}
    if "train_image_ids" in info:
        return set(info["train_image_ids"])
    files = (((info.get("config") or {}).get("task") or {}).get("train_data") or {}).get("input_path") or []
    return set(image_ids_of_files(ws.shards, files))  # a record older than train_image_ids


def _refuse_trained_on_validation(workspace, models: Mapping[str, str], image_ids: Sequence[str]) -> None:
    """Validation figures mean something only on images the models never trained on: after
    ``val_ids`` changed, a stage trained before may have seen today's validation images."""
    from helpers.train.config import FINAL_STAGE

    ws = as_workspace(workspace)
    val = set(image_ids) & set(image_ids_of(ws, "val"))
    for name, stage in models.items():
        seen = sorted(val & trained_on(ws, stage)) if stage != FINAL_STAGE else []
        if seen:
            raise InvalidRequest(
                f"model {name!r} (stage {stage!r}) was trained on {len(seen)} of today's validation images "
                f"({', '.join(seen[:5])}{', ...' if len(seen) > 5 else ''}): the validation split changed "
                "after it was trained, so its scores here would flatter it. Set val_ids in notebook 01 back "
                "to the split the stage was trained with, or train the stage again on the new split.")


def _cache_name(name: str, stage: str) -> str:
    """Predictions of the final stage standing in for model ``name`` are cached apart from it."""
    from helpers.train.config import FINAL_STAGE

    return f"{name}-{FINAL_STAGE}" if stage == FINAL_STAGE and name != FINAL_STAGE else name


def _with_final(ws: Workspace, stages: Mapping[str, str]) -> dict[str, str]:
    from helpers.train.config import FINAL_STAGE
    from helpers.train.stages import StageState, stage_progress

    progress = stage_progress(ws, FINAL_STAGE)
    if progress.state is not StageState.FINISHED:
        raise InvalidRequest(f"use_final needs a finished stage {FINAL_STAGE!r} ({progress}): train it in "
                             f"notebook 03 with stage = {FINAL_STAGE!r}")
    if "all" not in stages.values():
        raise InvalidRequest(f"the chosen strategy uses {sorted(set(stages.values()))}, not 'all': "
                             f"the {FINAL_STAGE!r} stage has nothing to replace")
    return {n: (FINAL_STAGE if s == "all" else s) for n, s in stages.items()}


def test_images(workspace):
    """The test images with their submission ids and sizes, from the shard index: notebook 01
    wrote each test image's COCO id (its ``source_id``) and its size there, read from the image
    itself, so a test_img_ids.json without sizes (or a dataset moved since) is no matter."""
    from helpers.data.shards import select_entries
    from helpers.infer.submission import TestImage

    return [TestImage(f"{e['image_id']}.png", e["image_id"], int(e["source_id"]), int(e["height"]), int(e["width"]))
            for e in select_entries(as_workspace(workspace).shards, splits=("test",))]
