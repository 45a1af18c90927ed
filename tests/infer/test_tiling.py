"""A large image's tiles (helpers.infer.tiling): the grid, and nuclei seen by two tiles kept once."""
import numpy as np
import pytest

from helpers.detections import Detections
from helpers.rle import decode_rles, encode_crops
from helpers.infer.tiling import merge_tiles, place_in_image, tile_grid

H = W = 120


def disk(cy, cx, r, size=(H, W)):
    yy, xx = np.mgrid[:size[0], :size[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_tile_grid_covers_with_overlap():
    wins = tile_grid(1000, 1500, tile=512, overlap=64)
    cover = np.zeros((1000, 1500), int)
    for y0, x0, y1, x1 in wins:
        assert y1 - y0 <= 512 and x1 - x0 <= 512
        cover[y0:y1, x0:x1] += 1
    assert cover.min() >= 1
    xs = sorted({w[1] for w in wins})
    assert all(b - a <= 512 - 64 for a, b in zip(xs, xs[1:]))
    assert tile_grid(500, 400, tile=512) == [(0, 0, 500, 400)]


def tile_dets(masks, window, scores):
    """What the model sees of each mask inside the tile, pasted back to image coordinates."""
    y0, x0, y1, x1 = window
    crops = [m[y0:y1, x0:x1] for m in masks]
    keep = [i for i, c in enumerate(crops) if c.any()]
    return Detections(encode_crops([crops[i] for i in keep], [(y0, x0)] * len(keep), (H, W)),
                      [scores[i] for i in keep], (H, W))


def test_merge_tiles_unites_nuclei_cut_by_borders():
    left, right = (0, 0, H, 70), (0, 50, H, W)  # overlap zone x in [50, 70)
    cut_a = disk(30, 68, 9)    # crosses the left tile's border (x=70) inside the zone
    cut_b = disk(90, 52, 9)    # crosses the right tile's border (x=50)
    wide = disk(60, 60, 14)    # spans the whole zone: cut in both tiles
    n_left, n_right = disk(20, 15, 7), disk(100, 105, 7)
    pair = [disk(105, 58, 5), disk(105, 69, 5)]  # two touching distinct nuclei inside the zone
    truth = [cut_a, cut_b, wide, n_left, n_right, *pair]
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.45, 0.4]
    a = tile_dets(truth, left, scores)
    b = tile_dets(truth, right, scores)
    assert len(a) + len(b) > len(truth)  # naive pooling would double nuclei
    merged = merge_tiles([a, b], [left, right])
    assert len(merged) == len(truth)
    got = decode_rles(merged.rles)
    for m in truth:  # each nucleus exactly once, whole again
        matches = [g for g in got if (g & m).sum() > 0.5 * m.sum()]
        assert len(matches) == 1 and np.array_equal(matches[0], m)
    with pytest.raises(ValueError, match="windows"):
        merge_tiles([a, b], [left])


def test_merge_tiles_keeps_the_whole_view_not_the_cut_piece():
    """The field's convention: a piece touching a tile's inner edge gives way to the nucleus
    seen whole by the other tile (not united with it: a cut view is often misshapen), and a
    nucleus seen whole by both tiles is kept once, as the better-scored tile saw it."""
    left, right = (0, 0, H, 70), (0, 50, H, W)
    nucleus = disk(30, 64, 9)                  # whole in the right tile, cut by x = 70 in the left
    misshapen = disk(30, 62, 9)[:, :70]        # the left tile's guess from the part it saw
    inside = disk(90, 60, 6)                   # wholly inside the zone: whole in both tiles
    a = Detections(encode_crops([misshapen[:, :70], np.roll(inside, 1, 1)[:, :70]], [(0, 0)] * 2, (H, W)),
                   [0.95, 0.6], (H, W))
    b = tile_dets([nucleus, inside], right, [0.7, 0.8])
    merged = merge_tiles([a, b], [left, right])
    assert len(merged) == 2
    got = decode_rles(merged.sorted().rles)
    np.testing.assert_array_equal(got[0], inside)   # 0.8 (right) beats 0.6 (left)
    np.testing.assert_array_equal(got[1], nucleus)  # the whole view, not the union with the piece
    assert sorted(merged.scores) == [0.7, 0.8]


def test_place_in_image():
    tile = np.zeros((2, 20, 30), bool)
    tile[0, 0:5, 0:5] = True
    tile[1, 15:20, 25:30] = True
    d = place_in_image(Detections.from_masks(tile, [0.9, 0.8]), (90, 100), (100, 120))
    m = decode_rles(d.rles)
    assert d.size == (100, 120) and m[0, 90:95, 100:105].all() and m[0].sum() == 25
    assert m[1].sum() == 0  # beyond the image: clipped away
