"""Route: a table maps each image to one model, by organ (through the manifest, or
``helpers.data.organs.organ_of``) or by listing images (:class:`Router`); :func:`route` takes
each image's detections from the model it names."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from helpers.detections import Detections
from helpers.errors import UserError

PerModel = Mapping[str, Mapping[str, Detections]]  # {model: {image_id: Detections}}


class RouteError(UserError, ValueError):
    """A route table names an unknown model, image or organ, or leaves an image unrouted."""


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
