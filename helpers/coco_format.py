"""COCO result and ground-truth structures (pycocotools) for :class:`~helpers.detections.Detections`.
"""
from __future__ import annotations

import contextlib
import io
from typing import Any, Mapping, Sequence

from helpers.detections import Detections
from helpers.rle import as_json_rle, rle_area, rle_bbox

CATEGORY_ID = 1
CATEGORY_NAME = "nucleus"
CATEGORIES = [{"id": CATEGORY_ID, "name": CATEGORY_NAME, "supercategory": CATEGORY_NAME}]

def result_entries(image_id: int, dets: Detections, category_id: int = CATEGORY_ID) -> list[dict]:
    """COCO result entries ``{image_id, category_id, segmentation, bbox, score}``;
    bbox comes from the RLE."""
    boxes = dets.boxes
    return [{"image_id": image_id, "category_id": int(category_id),
             "segmentation": {"size": list(r["size"]), "counts": r["counts"]},
             "bbox": [float(v) for v in box], "score": float(s)}
            for r, box, s in zip(dets.rles, boxes, dets.scores)]


def gt_dataset(images: Sequence[Mapping]) -> dict:
    """A COCO ground-truth dataset dict from ``[{"id": int, "file_name": str,
    "rles": [...], "size": (H, W)}, ...]``; annotation ids are 1..N in order."""
    coco_images, anns = [], []
    for im in images:
        h, w = (int(v) for v in im["size"])
        coco_images.append({"id": im["id"], "file_name": im.get("file_name", str(im["id"])),
                            "height": h, "width": w})
        rles = list(im.get("rles", []))
        if not rles:
            continue
        boxes, areas = rle_bbox(rles), rle_area(rles)
        for r, box, area in zip(rles, boxes, areas):
            r = as_json_rle(r)
            if r["size"] != [h, w]:
                raise ValueError(f"ground-truth mask of {im.get('file_name', im['id'])} is "
                                 f"{r['size']}, image is {[h, w]}")
            anns.append({"id": len(anns) + 1, "image_id": im["id"], "category_id": CATEGORY_ID,
                         "segmentation": r, "area": float(area), "bbox": [float(v) for v in box],
                         "iscrowd": 0})
    return {"info": {"description": "nuclei ground truth"}, "images": coco_images,
            "annotations": anns, "categories": [dict(c) for c in CATEGORIES]}


def coco_from_dataset(dataset: Mapping) -> "Any":
    """A pycocotools COCO object for a dataset dict (without its console chatter)."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dict(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def load_results(coco_gt, entries: list[dict]):
    """``coco_gt.loadRes(entries)`` quietly; an empty list gives an empty result set."""
    if not entries:
        return coco_from_dataset({"images": list(coco_gt.dataset["images"]), "annotations": [],
                                  "categories": list(coco_gt.dataset["categories"])})
    with contextlib.redirect_stdout(io.StringIO()):
        return coco_gt.loadRes(entries)
