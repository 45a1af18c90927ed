"""Predict nuclei with a trained stage, at full resolution, cached per (model, image, augmentation).

    preds = predict_stage(ws, "all", image_ids, tta=("hflip", "vflip"))   # {image_id: Detections}

* Images come from the shards (notebook 01), so Drive's many small PNGs are never read.
* The whole image goes through the model, padded to the model's stride, never resized.
  Images larger than ``tile`` are cut into overlapping tiles and nuclei cut by a tile
  border are joined (``tiling.merge_tiles``), not doubled.
* Model Garden's box-relative masks are pasted as its COCO evaluation does it
  (``model.detections_from_model_garden``) and stored as RLE.
* Test-time augmentation: each of ``AUGMENTATIONS`` is predicted on the transformed
  image, mapped back, and all are fused by mask IoU (``fusion.merge_detections``).
* Every (model, image, augmentation) is cached in ``predictions/<model>/`` with the
  checkpoint it came from; re-running computes nothing twice, and a newer checkpoint
  makes the old entries stale (recomputed).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np

from helpers.detections import Detections
from helpers.infer.model import detections_from_model_garden
from helpers.rle import encode_masks
from helpers.data import shards as shardlib
from helpers.infer.fusion import merge_detections
from helpers.infer.prediction_cache import PredictionCache
from helpers.infer.tiling import merge_tiles, place_in_image, tile_grid
from helpers.infer.tta import TTA_OPS, ZOOMS, augment_image, invert_tta, zoom_of
from helpers.workspace import Workspace, as_workspace
from helpers.errors import UserError

AUGMENTATIONS = TTA_OPS + tuple(ZOOMS)  # hflip, vflip, rot90, rot180, rot270, zoom125, zoom150 (helpers.infer.tta)


class PredictionError(UserError, ValueError):
    pass


# --------------------------------------------------------------------------- inputs from the shards
def _entries(ws: Workspace, image_ids: Sequence[str]) -> list[dict]:
    index = shardlib.load_index(ws.shards)
    by_id = {e["image_id"]: e for e in index["shards"]}
    unknown = [i for i in image_ids if i not in by_id]
    if unknown:
        raise PredictionError(f"image(s) {unknown[:5]} are not in {ws.shards / shardlib.INDEX_NAME}; "
                              "run notebook 01 on a dataset that holds them")
    return [by_id[i] for i in image_ids]


def image_ids_of(workspace, *splits: str) -> list[str]:
    """Image ids of the given splits ("train", "val", "test") as recorded in the shard index."""
    return sorted(e["image_id"] for e in shardlib.select_entries(as_workspace(workspace).shards, splits=splits))


def load_image(workspace, image_id: str, entry: dict | None = None) -> np.ndarray:
    """The uint8 (H, W, 3) image of ``image_id``, read from its shard (``entry``: its line of the
    shard index, when the caller has read the index already)."""
    import tensorflow as tf

    ws = as_workspace(workspace)
    (entry,) = [entry] if entry is not None else _entries(ws, [image_id])
    path = ws.shards / entry["file"]
    (record,) = list(tf.data.TFRecordDataset(str(path)).take(1).as_numpy_iterator())
    feat = tf.train.Example.FromString(record).features.feature
    image = tf.io.decode_png(feat["image/encoded"].bytes_list.value[0], channels=3).numpy()
    if image.shape[:2] != (entry["height"], entry["width"]):
        raise PredictionError(f"{path}: image is {image.shape[:2]}, index says "
                              f"{(entry['height'], entry['width'])}; re-run notebook 01")
    return image


def load_images(workspace, image_ids: Sequence[str]) -> dict[str, np.ndarray]:
    ws = as_workspace(workspace)
    return {i: load_image(ws, i, e) for i, e in zip(image_ids, _entries(ws, image_ids))}


def stain_reference(workspace, method: str, progress: bool = False):
    """What images are brought to under stain normalisation ``method``: for "macenko", the
    training images' stain, fit once and kept in ``predictions/stain_reference.json``
    (:mod:`helpers.infer.stain_normalization`); None for "none", or when the shards hold no
    training image."""
    from helpers.infer.stain_normalization import REFERENCE_FILE, check_method, saved_reference

    if check_method(method) == "none":
        return None
    ws = as_workspace(workspace)
    return saved_reference(ws.predictions / REFERENCE_FILE, image_ids_of(ws, "train"),
                           lambda ids: load_images(ws, ids), progress=progress)


def shard_ground_truth(workspace, image_ids: Sequence[str]) -> dict[str, list[dict]]:
    """``{image_id: [RLE, ...]}`` of the labeled images, from their shards."""
    ws = as_workspace(workspace)
    out = {}
    entries = _entries(ws, image_ids)
    tests = [e["image_id"] for e in entries if e["split"] == "test"]
    if tests:
        raise PredictionError(f"{tests[0]} is a test image: it has no ground truth")
    shardlib.check_shard_files(ws.shards, entries)
    for e in entries:
        rec = shardlib.read_shard(ws.shards / e["file"], fast=True)
        out[e["image_id"]] = encode_masks(rec["masks"])
    return out


# --------------------------------------------------------------------------- one image
def predict_detections(model, params, image: np.ndarray, augmentation: str | None = None,
                       tile: int = 1024, overlap: int = 128, score_threshold: float = 0.05,
                       max_dets: int | None = None, bar=None):
    """Detections of one image (optionally augmented, mapped back to the original frame).

    Images up to ``tile`` pixels a side go through the model whole; larger ones in
    overlapping tiles whose border-cut nuclei are joined (``tiling.merge_tiles``).
    Masks are pasted as Model Garden's COCO evaluation does it
    (``model.detections_from_model_garden``). ``model, params``: what ``model.load_model``
    returns. ``bar``: a tqdm bar advanced per tile.
    """
    from helpers.infer.model import input_scale, predict_image

    if augmentation is not None and augmentation not in AUGMENTATIONS:
        raise PredictionError(f"augmentation {augmentation!r} unknown; use one of {list(AUGMENTATIONS)}")
    zoom = zoom_of(augmentation)
    geometric = augmentation if augmentation in TTA_OPS else None
    view = augment_image(image, geometric) if geometric else image
    size = view.shape[:2]
    # ``tile`` is the model's input side; an input scale s enlarges a tile of tile/s px to it.
    windows = tile_grid(size[0], size[1], int(tile / (input_scale(params) * zoom)), overlap)
    parts = []
    for (y0, x0, y1, x1) in windows:
        det = predict_image(model, params, np.ascontiguousarray(view[y0:y1, x0:x1]),
                            score_threshold=score_threshold, zoom=zoom)
        dets = detections_from_model_garden(det["masks"], det["boxes"], det["scores"], det["image_shape"])
        dets = dets.filter(min_area=1)  # masks below 0.5 everywhere hold nothing
        parts.append(dets if len(windows) == 1 else place_in_image(dets, (y0, x0), size))
        if bar is not None:
            bar.update(1)
    out = parts[0] if len(windows) == 1 else merge_tiles(parts, windows)
    if geometric:
        out = invert_tta(out, geometric)
    return out.sorted().top(max_dets)


# --------------------------------------------------------------------------- a stage over many images
def _checkpoint_meta(prefix: Path, **extra) -> dict:
    from helpers.train.checkpoints import checkpoint_step

    return {"checkpoint": prefix.name, "step": int(checkpoint_step(prefix)), **extra}


def predict_stage(workspace, stage: str, image_ids: Sequence[str], tta: Sequence[str] = (),
                  name: str | None = None, checkpoint=None, merge: str = "wmf", iou_threshold: float = 0.5,
                  score_threshold: float = 0.05, tile: int = 1024, progress: bool = True,
                  return_parts: bool = False, stain: str = "none", unfinished: bool = False):
    """``{image_id: Detections}`` of a trained stage, plain + ``tta`` augmentations fused.

    Each (model ``name`` (default: the stage), image, augmentation) is cached; the model
    is only loaded when something is not cached yet. ``return_parts`` also returns
    ``{augmentation or "plain": {image_id: Detections}}`` before fusion. ``stain``: "macenko"
    predicts each image brought to the training images' stain (:mod:`helpers.infer.stain_normalization`),
    cached apart as ``<name>+macenko``. ``unfinished``: accept a stage short of its planned steps
    (``model.resolve_checkpoint``).
    """
    from helpers.infer.stain_normalization import check_method
    from helpers.progress import tqdm

    from helpers.infer.model import load_model, open_stage, resolve_checkpoint

    ws = as_workspace(workspace)
    name = name or stage
    cache_name = name if check_method(stain) == "none" else f"{name}+{stain}"
    unknown = [a for a in tta if a not in AUGMENTATIONS]
    if unknown:
        raise PredictionError(f"augmentation(s) {unknown} unknown; use some of {list(AUGMENTATIONS)}")
    st = open_stage(ws, stage)  # its stage.json, read once
    prefix = resolve_checkpoint(ws, st, checkpoint, unfinished)
    meta = _checkpoint_meta(prefix, stage=stage, score_threshold=score_threshold, tile=tile,
                            outputs="masks+mask_scores",
                            # a stage trained again (other config) to the same step is another model
                            fingerprint=st.record.get("fingerprint"),
                            **({} if stain == "none" else {"stain": stain}))
    cache = PredictionCache(ws.predictions)
    entries = dict(zip(image_ids, _entries(ws, image_ids)))  # unknown ids fail before any work
    loaded = {}
    augs: list[str | None] = [None, *tta]

    def compute(image_id, aug):
        if "model" not in loaded:
            loaded["model"], loaded["params"] = load_model(ws, st, checkpoint=prefix, min_score=score_threshold)
        return predict_detections(loaded["model"], loaded["params"], model_input(image_id), aug,
                                  tile=tile, score_threshold=score_threshold)

    def model_input(image_id):
        """The image as the model sees it, stain-normalised once for all its augmentations."""
        if loaded.get("image_id") != image_id:
            image = load_image(ws, image_id, entries[image_id])
            if stain != "none":
                if "reference" not in loaded:
                    loaded["reference"] = stain_reference(ws, stain, progress=progress)
                if loaded["reference"] is not None:
                    image, note = loaded["reference"].normalize(image)
                    if note:
                        print(f"{image_id}: {note}")
            loaded["image_id"], loaded["image"] = image_id, image
        return loaded["image"]

    parts: dict[str, dict[str, Detections]] = {a or "plain": {} for a in augs}
    todo = [(i, a) for i in image_ids for a in augs]
    t0, computed = time.time(), 0
    bar = tqdm(todo, desc=f"predict {name}", unit="img", disable=not progress)
    for image_id, aug in bar:
        bar.set_postfix_str(f"{image_id[:12]} {aug or 'plain'}")
        key = (cache_name, image_id, aug)
        # the image's own pixels too: an image replaced under the same id is predicted again
        image_meta = {**meta, "image": entries[image_id].get("image_sha256") or entries[image_id].get("sha256")}
        if not cache.has(key, image_meta):
            computed += 1
        parts[aug or "plain"][image_id] = cache.get_or_compute(key, lambda: compute(image_id, aug), image_meta)
    bar.close()
    # one line even without a bar: what was computed and what came from the cache
    print(f"{cache_name}: {len(todo)} predictions ({computed} computed, {len(todo) - computed} from cache) "
          f"with {prefix.name} in {time.time() - t0:.1f} s")
    if tta:
        fused = {i: merge_detections([parts[a or "plain"][i] for a in augs], merge, iou_threshold)
                 for i in image_ids}
    else:
        fused = dict(parts["plain"])
    return (fused, parts) if return_parts else fused

