"""Small masks and detections for the routing, fusion and strategy tests."""
import numpy as np

from helpers.detections import Detections

H = W = 120
BREAST, PROSTATE, COLON = "TCGA-A7-D000-01Z-00-DX1", "TCGA-G9-D002-01Z-00-DX1", "TCGA-AY-D100-01Z-00-DX1"


def disk(cy, cx, r, size=(H, W)):
    yy, xx = np.mgrid[:size[0], :size[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def dets(masks, scores):
    return Detections.from_masks(np.stack(masks), scores)


def marker(value):
    """A one-mask Detections whose score identifies where it came from."""
    return dets([disk(10, 10, 3)], [value])


def two_models():
    """Model A and B both find nuclei 1-3 (B slightly shifted); 2 and 3 touch each other.
    Only A finds nucleus 4, only B nucleus 5."""
    n1, n2, n3 = disk(30, 30, 8), disk(70, 40, 8), disk(70, 57, 8)  # n2, n3 distinct neighbours
    n4, n5 = disk(100, 100, 6), disk(20, 95, 6)
    a = dets([n1, n2, n3, n4], [0.9, 0.8, 0.85, 0.6])
    b = dets([np.roll(n1, 1, 1), np.roll(n2, 1, 0), n3, n5], [0.7, 0.9, 0.8, 0.5])
    return a, b, [n1, n2, n3, n4, n5]
