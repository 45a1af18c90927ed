"""Ground truth read straight from a dataset folder's mask PNGs (the workflow reads it from the
shards, ``helpers.infer.predict.shard_ground_truth``): the tests' independent reference."""
from __future__ import annotations

from typing import Sequence

from helpers.rle import encode_masks
from helpers.infer.evaluate import EvaluationError


def load_ground_truth(dataset, image_ids: Sequence[str], progress: bool = True) -> dict[str, list[dict]]:
    """``{image_id: [RLE, ...]}`` for training-pool images (e.g. the validation split)
    of a ``helpers.data.dataset.Dataset`` (or a dataset root path)."""
    from helpers.progress import tqdm

    from helpers.data import dataset as ds

    if not hasattr(dataset, "train"):
        dataset = ds.open_dataset(dataset)
    items = {it.image_id: it for it in dataset.train}
    unknown = [i for i in image_ids if i not in items]
    if unknown:
        raise EvaluationError(f"images not in the training pool of {dataset.root}: {unknown[:5]}; "
                              "ground truth exists only for train/ images")
    out = {}
    for image_id in tqdm(list(image_ids), desc="ground truth", disable=not progress):
        out[image_id] = encode_masks(ds.read_masks(items[image_id]))
    return out
