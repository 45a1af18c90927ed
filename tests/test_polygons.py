"""Outlines and their rasterisation (helpers/polygons.py)."""
import numpy as np
from scipy import ndimage
from shapely.geometry import Polygon

from helpers.data.dataset import open_dataset, read_masks
from helpers.data.demo_data import make_demo_dataset
from helpers.polygons import outline, rasterize


def test_an_exact_outline_rasterises_back_to_the_same_pixels(tmp_path):
    root = make_demo_dataset(tmp_path / "demo", n_train=2, n_test=0, size=160)
    masks = [m for it in open_dataset(root).train for m in read_masks(it)]
    assert len(masks) > 10
    for mask in masks:
        assert np.array_equal(rasterize(outline(mask, tolerance=0), mask.shape), ndimage.binary_fill_holes(mask))


def test_pixel_edges_holes_and_the_border():
    square = Polygon([(2, 1), (6, 1), (6, 5), (2, 5)], holes=[[(3, 2), (4, 2), (4, 3), (3, 3)]])
    mask = rasterize(square, (8, 8))
    want = np.zeros((8, 8), bool)
    want[1:5, 2:6] = True
    want[2, 3] = False  # the hole's one pixel
    assert np.array_equal(mask, want)
    cut = rasterize(Polygon([(-3, -3), (2, -3), (2, 2), (-3, 2)]), (8, 8))  # cut at the image's border
    assert cut.sum() == 4 and cut[:2, :2].all()
