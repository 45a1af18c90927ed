"""Stain normalisation at prediction: each image Macenko-normalised to the training images' stain.

A model trained on some slides meets a new slide's stain as something it has not seen: its scores
run lower and it misses pale nuclei. Before the model sees an image, it is brought to the
training images' stain (Macenko et al. 2009, torchstain's numpy implementation); the exports and
overlays still show the image as it is. On the real data this gained AP@1000 +0.05 on the
validation split and +0.06 on an organ held out of training (docs/quality.md).

    reference = predict.stain_reference(ws, "macenko")  # fit once on the training images, saved beside the predictions
    image, note = reference.normalize(image)   # uint8 (H, W, 3); the image unchanged (and a note) if it has no stain to estimate

The reference is the median, over the training images, of each image's Macenko stain vectors
(haematoxylin and eosin, in optical density) and maximal stain concentrations: one image's
outliers do not set it.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from helpers.atomic import atomic_write_json
from helpers.errors import UserError

STAIN_METHODS = ("macenko", "none")
DEFAULT_STAIN = "macenko"
REFERENCE_FILE = "stain_reference.json"
MAX_REFERENCE_IMAGES = 32  # fitting takes ~1-3 s an image on a CPU; more images barely move a median


class StainError(UserError, ValueError):
    """A stain method that does not exist, or one that cannot run here."""


def check_method(method: str) -> str:
    if method not in STAIN_METHODS:
        raise StainError(f"stain {method!r} unknown; use one of {list(STAIN_METHODS)}")
    return method


def _normalizer():
    try:
        import torchstain
    except ImportError as e:
        raise StainError("stain normalisation needs the torchstain package: pip install torchstain "
                         "(on Colab the setup cell installs it), or set stain = 'none'") from e
    return torchstain.normalizers.MacenkoNormalizer(backend="numpy")


def _fit_one(image: np.ndarray):
    """(stain vectors 3x2, max concentrations 2) of one image, or None when it has too little
    tissue to estimate them (a blank or near-white image)."""
    normalizer = _normalizer()
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            normalizer.fit(np.ascontiguousarray(image[..., :3]))
    except (np.linalg.LinAlgError, ValueError, IndexError):
        return None
    he, max_c = np.asarray(normalizer.HERef, float), np.asarray(normalizer.maxCRef, float)
    return (he, max_c) if np.isfinite(he).all() and np.isfinite(max_c).all() else None


@dataclass(frozen=True)
class StainReference:
    """The stain every image is brought to: Macenko's stain vectors (3 x 2, H then E, optical
    density) and maximal concentrations (2), and the images they were fit on."""

    stain_vectors: tuple[tuple[float, float], ...]
    max_concentrations: tuple[float, float]
    image_ids: tuple[str, ...] = ()

    def normalize(self, image: np.ndarray) -> tuple[np.ndarray, str | None]:
        """``image`` (uint8 RGB) in the reference's stain, and None; or the image unchanged and a
        note, when it holds too little stained tissue to estimate its own stain."""
        normalizer = _normalizer()
        normalizer.HERef = np.asarray(self.stain_vectors, float)
        normalizer.maxCRef = np.asarray(self.max_concentrations, float)
        try:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore", RuntimeWarning)
                out = normalizer.normalize(I=np.ascontiguousarray(image[..., :3]), stains=False)[0]
        except (np.linalg.LinAlgError, ValueError, IndexError):
            out = None
        if out is None or not np.isfinite(np.asarray(out, float)).all():
            return image, "too little stained tissue to estimate its stain: predicted as it is"
        return np.asarray(out, np.uint8), None

    def to_json(self) -> dict:
        return {"method": "macenko", **asdict(self)}

    @classmethod
    def from_json(cls, obj) -> "StainReference":
        return cls(tuple(tuple(map(float, row)) for row in obj["stain_vectors"]),
                   tuple(map(float, obj["max_concentrations"])), tuple(obj.get("image_ids", ())))


def fit_reference(images: Iterable[np.ndarray], image_ids: Sequence[str] = ()) -> StainReference:
    """The median Macenko stain of ``images`` (those with no stain to estimate are passed over)."""
    fits = [f for f in map(_fit_one, images) if f is not None]
    if not fits:
        raise StainError("none of the images holds enough stained tissue to estimate a stain")
    he = np.median([f[0] for f in fits], axis=0)
    max_c = np.median([f[1] for f in fits], axis=0)
    return StainReference(tuple(tuple(map(float, r)) for r in he), tuple(map(float, max_c)), tuple(image_ids))


def reference_ids(image_ids: Sequence[str], limit: int = MAX_REFERENCE_IMAGES) -> tuple[str, ...]:
    """The training images a reference is fit on: all of them, or ``limit`` spread evenly."""
    ids = sorted(image_ids)
    if len(ids) <= limit:
        return tuple(ids)
    return tuple(ids[int(k)] for k in np.linspace(0, len(ids) - 1, limit))


def saved_reference(path, image_ids: Sequence[str], load_images: Callable[[list[str]], Mapping],
                    progress: bool = False) -> StainReference | None:
    """The reference fit on ``image_ids`` (:func:`reference_ids` of them), kept in ``path`` until
    those images change; ``load_images(ids)`` gives {id: image}. None without images."""
    ids = reference_ids(image_ids)
    if not ids:
        return None
    path = Path(path)
    if path.is_file():
        try:
            saved = StainReference.from_json(json.loads(path.read_text(encoding="utf-8")))
            if saved.image_ids == ids:
                return saved
        except (ValueError, KeyError, TypeError):
            pass  # unreadable: fit again and replace it (it is ours, derived from the images)
    if progress:
        print(f"stain reference: Macenko, fit on {len(ids)} training images")
    images = load_images(list(ids))
    reference = fit_reference((images[i] for i in ids), ids)
    atomic_write_json(path, reference.to_json())
    return reference
