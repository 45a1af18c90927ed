"""Cache of predictions per (model, image, augmentation) as RLE JSON.

Layout: ``<root>/<model>/<image_id>.json`` for the plain prediction and
``<root>/<model>/<image_id>.<tta>.json`` for an augmentation (``root`` is
``get_workspace().predictions``). Each file holds the RLEs, scores and boxes of
one image plus a ``meta`` dict (e.g. the checkpoint it came from).

Files are written atomically (helpers.atomic). A file that does not parse, lacks
a field, has inconsistent lengths or an invalid RLE is *corrupt*: ``has`` says
False, ``load`` raises ``CacheError`` and ``get_or_compute`` recomputes it (with
a warning) instead of reading it. A file whose ``meta`` differs from the
``meta`` asked for is *stale* and is recomputed the same way.
"""
from __future__ import annotations

import json
import os
import re
import urllib.parse
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from helpers.atomic import atomic_write_json, is_partial
from helpers.detections import Detections
from helpers.rle import RLEError
from helpers.errors import UserError

FORMAT = "nuclei-predictions/1"
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_+-]*$")  # model/tta: no dots, no slashes
# An image id is the test file's stem, whatever it holds ("X v2", "X.v2"): in a cache file's name
# every other character is %XX-escaped, so "." only ever separates the augmentation.
_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_+-")


def _file_stem(image_id: str) -> str:
    return "".join(c if c in _SAFE else "".join(f"%{b:02X}" for b in c.encode()) for c in image_id)


def _image_id(file_stem: str) -> str:
    return urllib.parse.unquote(file_stem, errors="strict")


class CacheError(UserError, ValueError):
    """A cache file is missing, partial, corrupt or stale."""


@dataclass(frozen=True)
class CacheKey:
    model: str
    image_id: str
    tta: str | None = None  # None = no augmentation

    def __post_init__(self):
        if not isinstance(self.model, str) or not _NAME.match(self.model):
            raise ValueError(f"model name {self.model!r} must be letters, digits, '_', '-' or '+' "
                             "(it is a folder name)")
        if not isinstance(self.image_id, str) or not self.image_id or "/" in self.image_id:
            raise ValueError(f"image id {self.image_id!r} must be a file stem (not empty, no '/')")
        if self.tta is not None and (not isinstance(self.tta, str) or not _NAME.match(self.tta)):
            raise ValueError(f"augmentation name {self.tta!r} must be letters, digits, '_', '-' or '+' "
                             "(no dots), or None for no augmentation")

    @classmethod
    def of(cls, key: "CacheKey | tuple") -> "CacheKey":
        return key if isinstance(key, CacheKey) else cls(*key)


class PredictionCache:
    """``PredictionCache(get_workspace().predictions)``; keys are ``CacheKey`` or
    ``(model, image_id[, tta])`` tuples."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, key: CacheKey | tuple) -> Path:
        k = CacheKey.of(key)
        stem = _file_stem(k.image_id)
        name = stem if k.tta is None else f"{stem}.{k.tta}"
        return self.root / k.model / f"{name}.json"

    # ------------------------------------------------------------------ read
    def _read(self, key: CacheKey | tuple, meta: Mapping | None = None) -> Detections:
        k = CacheKey.of(key)
        path = self.path(k)
        if not path.is_file():
            raise CacheError(f"no cached prediction for {k} at {path}")
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(obj, dict) or obj.get("format") != FORMAT:
                raise CacheError(f"not a {FORMAT} file")
            if obj.get("image_id") != k.image_id or obj.get("model") != k.model or obj.get("tta") != k.tta:
                raise CacheError(f"file says model={obj.get('model')!r} image={obj.get('image_id')!r} "
                                 f"tta={obj.get('tta')!r}")
            if len(obj["counts"]) != obj["n"] or len(obj["scores"]) != obj["n"]:
                raise CacheError(f"holds {len(obj['counts'])} masks / {len(obj['scores'])} scores, "
                                 f"header says {obj['n']}")
            dets = Detections.from_json(obj, validate=True)
            if "boxes" in obj and len(obj["boxes"]) != obj["n"]:
                raise CacheError("boxes and masks differ in number")
        except CacheError as e:
            raise CacheError(f"corrupt cache file {path}: {e}; delete it or recompute") from None
        except (ValueError, KeyError, TypeError, RLEError, UnicodeDecodeError) as e:
            raise CacheError(f"corrupt cache file {path}: {type(e).__name__}: {e}; "
                             "delete it or recompute") from None
        if meta is not None and obj.get("meta") != json.loads(json.dumps(dict(meta))):
            raise CacheError(f"stale cache file {path}: made with {obj.get('meta')}, asked for {dict(meta)}")
        return dets

    def has(self, key: CacheKey | tuple, meta: Mapping | None = None) -> bool:
        """True if a complete, valid (and, with ``meta``, matching) file exists."""
        try:
            self._read(key, meta)
            return True
        except CacheError:
            return False

    def load(self, key: CacheKey | tuple, meta: Mapping | None = None) -> Detections:
        """The cached Detections; CacheError if missing, corrupt or stale."""
        return self._read(key, meta)

    def load_meta(self, key: CacheKey | tuple) -> dict:
        path = self.path(key)
        try:
            return dict(json.loads(path.read_text(encoding="utf-8")).get("meta") or {})
        except (OSError, ValueError, AttributeError) as e:
            raise CacheError(f"cannot read {path}: {e}") from None

    # ------------------------------------------------------------------ write
    def save(self, key: CacheKey | tuple, dets: Detections, meta: Mapping | None = None) -> Path:
        """Write atomically (replaces an existing file for the same key)."""
        k = CacheKey.of(key)
        if not isinstance(dets, Detections):
            raise TypeError(f"save() needs a Detections, got {type(dets).__name__}")
        obj: dict[str, Any] = {"format": FORMAT, "model": k.model, "image_id": k.image_id, "tta": k.tta,
                               "meta": json.loads(json.dumps(dict(meta or {}))), "n": len(dets)}
        obj.update(dets.to_json())
        obj["boxes"] = [[round(float(v), 2) for v in b] for b in dets.boxes]
        return atomic_write_json(self.path(k), obj, indent=None)

    def get_or_compute(self, key: CacheKey | tuple, fn: Callable[[], Detections],
                       meta: Mapping | None = None, on_stale: str = "recompute") -> Detections:
        """Cached Detections for ``key``, or ``fn()`` saved then returned.

        A corrupt file is recomputed and replaced (with a warning), never read. A stale
        file (its ``meta`` differs from ``meta``, e.g. another checkpoint) is recomputed
        too, or raises CacheError with ``on_stale="error"``.
        """
        if on_stale not in ("recompute", "error"):
            raise ValueError(f"on_stale must be 'recompute' or 'error', not {on_stale!r}")
        k = CacheKey.of(key)
        path = self.path(k)
        if path.exists():
            try:
                return self._read(k, meta)
            except CacheError as e:
                if on_stale == "error" and str(e).startswith("stale"):
                    raise CacheError(f"{e}; use another model name, or pass on_stale='recompute' "
                                     "to replace it") from None
                warnings.warn(f"{e}; recomputing", stacklevel=2)
        dets = fn()
        self.save(k, dets, meta)
        return dets

    # ------------------------------------------------------------------ listing
    def models(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _NAME.match(p.name))

    def keys(self, model: str) -> Iterator[CacheKey]:
        """Keys of the files present for ``model`` (validity not checked; partial files skipped)."""
        folder = self.root / model
        if not folder.is_dir():
            return
        for p in sorted(folder.glob("*.json")):
            if is_partial(p) or p.name.startswith("."):
                continue
            parts = p.name[:-len(".json")].split(".")
            try:
                image_id = _image_id(parts[0])
            except UnicodeDecodeError:
                continue
            if len(parts) == 1:
                yield CacheKey(model, image_id)
            elif len(parts) == 2:
                yield CacheKey(model, image_id, parts[1])

    def load_predictions(self, model: str, image_ids=None, tta: str | None = None) -> dict[str, Detections]:
        """``{image_id: Detections}`` of one model (and augmentation); CacheError if any
        requested image is missing or corrupt."""
        if image_ids is None:
            image_ids = [k.image_id for k in self.keys(model) if k.tta == tta]
        return {i: self.load((model, i, tta)) for i in image_ids}

    def load_all_predictions(self, models, image_ids, tta: str | None = None) -> dict[str, dict[str, Detections]]:
        """``{model: {image_id: Detections}}``, the input of ``helpers.infer.strategy``."""
        return {m: self.load_predictions(m, image_ids, tta) for m in models}
