"""Two small test images and their predictions, for the answer's tests (tests/infer/)."""
from __future__ import annotations

import numpy as np

from helpers.detections import Detections

A, B = "TCGA-E2-D100-01Z-00-DX1", "TCGA-G9-D101-01Z-00-DX1"
SIZE = (48, 64)


def boxes_dets(boxes, scores, size=SIZE):
    m = np.zeros((len(boxes),) + size, bool)
    for i, (y0, x0, y1, x1) in enumerate(boxes):
        m[i, y0:y1, x0:x1] = True
    return Detections.from_masks(m, scores)


def preds():
    return {A: boxes_dets([(2, 2, 10, 12), (20, 30, 30, 40)], [0.9, 0.4]),
            f"{B}.png": boxes_dets([(5, 5, 15, 15)], [0.7])}  # file names work as keys too
