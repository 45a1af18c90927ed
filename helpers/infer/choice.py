"""Notebook 04's choice as one record, ``predictions/choice.json``, for notebooks 05 and 06.

It holds all notebook 05 needs to replay the pick on the test images, so nothing is re-derived
there: the ensemble strategy, the stage each of its models stands for, the rescoring recipe,
the test-time augmentations both were measured with, the stain normalisation every pass was
predicted with (:mod:`helpers.infer.stain_normalization`), the segmentation rule of the exports (their
score threshold and overlap cuts, :mod:`helpers.infer.segmentation`), and the metric and tables
that chose them. A record written before the rule was chosen reads with ``segmentation`` None:
the exports then use :data:`~helpers.infer.segmentation.DEFAULT_RULE` and say so.
A learned rescoring's ranking is saved beside it (``ranking.npz``, :mod:`helpers.infer.ranking`).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Mapping

from helpers.atomic import atomic_write_json
from helpers.infer import ranking
from helpers.infer.evaluate import LEADERBOARD_METRIC
from helpers.infer.rescore import RECIPES, Recipe
from helpers.infer.segmentation import DEFAULT_RULE, SegmentationError, SegmentationRule
from helpers.infer.stain_normalization import StainError, check_method
from helpers.infer.strategy import EnsembleError, Strategy, strategy_from_json
from helpers.infer.tta import TTA_SUFFIX, base_model
from helpers.train.config import stage_kind
from helpers.errors import UserError

CHOICE_FILE = "choice.json"
FORMAT_VERSION = 1
OLDER_FILES = ("ensemble.json", "rescoring.json")  # the choice as two files, before this record


class ChoiceError(UserError, ValueError):
    """No choice record, or one that cannot be read."""


class ChoiceExists(UserError, FileExistsError):
    """An earlier run saved another choice: the message names both and how to replace it."""


@dataclass(frozen=True)
class Choice:
    strategy: Strategy
    stages: Mapping[str, str]          # {model: stage} for each model the strategy uses ('all' for 'all+tta')
    recipe: Recipe = RECIPES["none"]   # the rescoring
    tta: tuple[str, ...] = ()          # the augmentations the '+tta' models and the rescoring were measured with
    metric: str = LEADERBOARD_METRIC   # what chose
    tables: Mapping = field(default_factory=dict, compare=False)  # {"strategies": rows, "rescoring": rows, ...}
    segmentation: SegmentationRule | None = None  # the exports' rule; None: chosen before rules were
    segmentation_metric: str = ""      # what chose it (PQ, AJI or F1@0.5)
    stain: str = "none"                # the stain normalisation every pass was predicted with ("macenko"; older records: none)

    def __post_init__(self):
        lacking = sorted({base_model(m) for m in self.strategy.models} - set(self.stages))
        if lacking:
            raise ChoiceError(f"strategy {self.strategy.name!r} uses model(s) {lacking} with no stage")

    @property
    def uses_tta(self) -> bool:
        """Whether replaying it needs the augmented passes (a '+tta' model or an agreement rescoring)."""
        return self.recipe.needs_passes or any(m.endswith(TTA_SUFFIX) for m in self.strategy.models)

    def describe(self) -> str:
        stages = ", ".join(f"{m} = stage {s!r}" for m, s in self.stages.items())
        exports = (f"; exports: {self.segmentation.describe()} (chosen by {self.segmentation_metric})"
                   if self.segmentation else "")
        return (f"strategy {self.strategy.describe()}; rescoring {self.recipe.name!r}; "
                f"tta {list(self.tta)}; stain {self.stain!r}; models: {stages}; chosen by {self.metric}{exports}")

    def to_json(self) -> dict:
        out = {"format": FORMAT_VERSION, "strategy": self.strategy.to_json(), "stages": dict(self.stages),
               "recipe": asdict(self.recipe), "tta": list(self.tta), "metric": self.metric,
               "tables": dict(self.tables), "stain": self.stain}
        if self.segmentation is not None:
            out["segmentation"] = {**self.segmentation.to_json(), "metric": self.segmentation_metric}
        return out

    @classmethod
    def from_json(cls, obj: Mapping) -> "Choice":
        seg = dict(obj.get("segmentation") or {})
        seg_metric = str(seg.pop("metric", ""))
        for stage in dict(obj["stages"]).values():
            stage_kind(stage)  # an unknown stage name: a ConfigError, named with the file by load_choice
        return cls(strategy_from_json(obj["strategy"]), dict(obj["stages"]), Recipe(**obj["recipe"]),
                   tuple(obj["tta"]), str(obj["metric"]), dict(obj.get("tables") or {}),
                   SegmentationRule.from_json(seg) if seg else None, seg_metric,
                   check_method(str(obj.get("stain", "none"))))


def export_rule(choice: Choice | None, min_score: float | None = None) -> tuple[SegmentationRule, str]:
    """(rule, where it comes from): the rule notebook 04 chose on validation; a ``min_score``
    (a number) replaces its threshold, the same for every image; without a recorded rule,
    :data:`DEFAULT_RULE`."""
    recorded = choice.segmentation if choice is not None else None
    rule = recorded or DEFAULT_RULE
    if min_score is not None:
        return rule.with_min_score(min_score), f"min_score = {min_score:g}, set here (for every image)"
    if recorded is None:
        return rule, (f"the default ({rule.describe()}): notebook 04 chose no threshold; run it to choose "
                      "one on validation")
    return rule, f"chosen on validation by {choice.segmentation_metric} in notebook 04"


def choice_path(predictions_dir) -> Path:
    return Path(predictions_dir) / CHOICE_FILE


def save_choice(predictions_dir, choice: Choice, ranker: ranking.Ranker | None = None,
                overwrite: bool = False) -> Path:
    """Write ``choice`` (and a learned rescoring's ``ranker`` beside it), atomically. A record of
    another choice from an earlier run is kept unless ``overwrite``; the same choice again is fine."""
    path = choice_path(predictions_dir)
    if path.is_file() and not overwrite:
        try:
            saved = load_choice(predictions_dir)
        except ChoiceError:
            saved = None
        if saved is not None and saved.segmentation is None and choice.segmentation is not None:
            saved = replace(saved, segmentation=choice.segmentation,  # an older record gains its rule
                            segmentation_metric=choice.segmentation_metric)
        if saved != choice:
            was = f" ({saved.describe()})" if saved else ""
            raise ChoiceExists(f"{path} holds another choice from an earlier run{was}, not this one "
                               f"({choice.describe()}). To replace it, set overwrite_choice = True in the "
                               "parameters cell (overwrite_choice=True) and run again.")
    if choice.recipe.learned:
        if ranker is None or ranker.target != choice.recipe.learned:
            raise ChoiceError(f"rescoring {choice.recipe.name!r} is learned: save its ranking with it")
        ranking.save(ranker, ranking.ranking_path(predictions_dir))
    return atomic_write_json(path, choice.to_json())


def load_choice(predictions_dir, required: bool = True) -> Choice | None:
    """The choice notebook 04 saved. Without one: a ChoiceError that says to run notebook 04, or
    None when not ``required``."""
    path = choice_path(predictions_dir)
    if not path.is_file():
        older = [f for f in OLDER_FILES if (Path(predictions_dir) / f).is_file()]
        if older:
            raise ChoiceError(f"{Path(predictions_dir) / older[0]} is notebook 04's choice as an earlier version "
                              f"wrote it; run notebook 04 again to write {CHOICE_FILE} (its predictions are "
                              "cached, so it only scores them again)")
        if not required:
            return None
        raise ChoiceError(f"{path} not found: run notebook 04 first (it chooses the strategy and rescoring)")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
        if obj.get("format") != FORMAT_VERSION:
            raise ValueError(f"format {obj.get('format')!r}, not {FORMAT_VERSION}")
        return Choice.from_json(obj)
    except (ValueError, KeyError, TypeError, AttributeError, EnsembleError, SegmentationError, StainError) as e:
        raise ChoiceError(f"{path} is not a choice record ({type(e).__name__}: {e}); run notebook 04 "
                          "again to write it") from None


def load_ranker(predictions_dir, recipe: Recipe) -> ranking.Ranker | None:
    """The learned ranking a learned ``recipe`` applies (None for a hand recipe)."""
    if not recipe.learned:
        return None
    ranker = ranking.load(ranking.ranking_path(predictions_dir))
    if ranker.target != recipe.learned:
        raise ChoiceError(f"{ranking.ranking_path(predictions_dir)} learned {ranker.target!r}, but "
                          f"{choice_path(predictions_dir)} chose {recipe.name!r}: run notebook 04 again")
    return ranker
