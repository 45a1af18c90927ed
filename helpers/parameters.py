"""The notebooks' parameters: what each one takes, checked once, where a notebook receives them.

Every name a notebook's ``parameters`` cell declares is in :data:`PARAMETERS` with its kind (a
test holds the two together). Each notebook calls :func:`check_parameters` right after its setup
cell, and ``python -m helpers.notebooks`` calls it on its ``-p`` values before anything runs, so
``steps="abc"`` or ``tta="hflip"`` (a string where a list belongs) is one clear line naming the
parameter and what it takes, not a traceback from deep inside a helper. What a value means
(a stage that exists, a metric's name) is checked where it is used.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from helpers.errors import UserError


class ParameterError(UserError, ValueError):
    """A notebook parameter of the wrong kind or out of range: the message names it."""


@dataclass(frozen=True)
class Kind:
    takes: str                      # what the parameter takes, in a user's words
    accepts: Callable[[Any], bool]


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_names(v) -> bool:
    return isinstance(v, (list, tuple)) and all(isinstance(x, str) and x for x in v)


def _is_name_map(v) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, str) for k, x in v.items())


def integer(low: int | None = None) -> Kind:
    return Kind(f"a whole number{'' if low is None else f' of {low} or more'}",
                lambda v: _is_int(v) and (low is None or v >= low))


def number(low: float | None = None, high: float | None = None) -> Kind:
    where = (f" from {low} to {high}" if low is not None and high is not None
             else f" of {low} or more" if low is not None else "")
    return Kind(f"a number{where}", lambda v: _is_number(v) and (low is None or v >= low)
                and (high is None or v <= high))


def optional(kind: Kind) -> Kind:
    return Kind(f"None or {kind.takes}", lambda v: v is None or kind.accepts(v))


def choice(*values: str) -> Kind:
    return Kind(f"one of {', '.join(map(repr, values))}", lambda v: v in values)


TEXT = Kind("a string (in quotes)", lambda v: isinstance(v, str))
FLAG = Kind("True or False", lambda v: isinstance(v, bool))
NAMES = Kind('a list of names, e.g. ["a", "b"] (a single name too goes in brackets)', _is_names)
NAME_MAP = Kind('a dict of names, e.g. {"colon": "all"}', _is_name_map)
MODELS = Kind('a list of stages, e.g. ["heads", "all"], or a dict {"name": "stage"}',
              lambda v: _is_names(v) or _is_name_map(v))
FRACTION = number(0.0, 1.0)

PARAMETERS: dict[str, Kind] = {
    # every notebook
    "profile": choice("colab", "cpu", "demo"), "workspace_root": TEXT, "REPO_URL": TEXT,
    # 01 prepare shards
    "data_source": TEXT, "manifest_path": TEXT, "n_val": optional(integer(0)), "val_ids": NAMES,
    "seed": integer(), "layout": choice("auto", "course", "labels", "coco", "geojson"), "nucleus_classes": NAMES,
    # 02, 03 training
    "steps": integer(0), "time_budget_minutes": number(0.0), "checkpoint_every": integer(0), "pretrained": TEXT,
    "start_from": TEXT,
    "from_scratch": FLAG, "n_show": integer(0), "score_threshold": FRACTION, "overlay_min_score": FRACTION,
    "stage": TEXT, "organs": NAMES, "image_ids": NAMES,
    # 04 ensemble
    "models": MODELS, "tta": optional(NAMES), "stain": choice("macenko", "none"), "route_by_organ": NAME_MAP,
    "route_by_image": NAME_MAP, "route_default": TEXT, "merge_iou": FRACTION, "metric": TEXT, "choice": TEXT,
    "rescore_choice": TEXT, "export_metric": TEXT, "export_min_score": optional(FRACTION),
    "overwrite_choice": FLAG, "use_unfinished": FLAG,
    # 05 submit
    "final_model": FLAG, "resolve_overlaps": FLAG, "min_score": optional(FRACTION), "max_dets": optional(integer(1)),
    "overwrite": FLAG, "pixel_size_um": optional(number(0.01, 100.0)),
    # 06 your images
    "source": TEXT, "run": TEXT, "tile": integer(64), "overlap": integer(0), "show": integer(0),
}


def check_parameters(values: Mapping[str, Any]) -> None:
    """:class:`ParameterError` naming every parameter of ``values`` (a notebook's ``globals()``
    or the ``-p`` values; other names are ignored) whose value its kind does not take."""
    bad = [f"{name} = {values[name]!r}: takes {kind.takes}" for name, kind in PARAMETERS.items()
           if name in values and not kind.accepts(values[name])]
    if bad:
        raise ParameterError("; ".join(bad) + ". Set it in the parameters cell (or with -p) and run again.")
