import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from helpers.coco_format import coco_from_dataset, gt_dataset, load_results, result_entries
from helpers.detections import Detections
from helpers.rle import RLEError, check_rle, decode_crop, decode_rles, encode_crops, encode_masks, rle_area, rle_bbox, rle_runs


def random_masks(n=12, h=41, w=29, seed=0):
    rng = np.random.default_rng(seed)
    m = rng.random((n, h, w)) > 0.6
    m[0] = False  # empty
    m[1] = True  # full
    m[2] = False
    m[2, 5:9, 3:20] = True  # a box
    return m


def test_rle_round_trip_matches_pycocotools():
    m = random_masks()
    rles = encode_masks(m)
    assert all(isinstance(r["counts"], str) and r["size"] == [41, 29] for r in rles)
    ref = mask_utils.encode(np.asfortranarray(m.transpose(1, 2, 0).astype(np.uint8)))
    assert [r["counts"] for r in rles] == [r["counts"].decode() for r in ref]
    assert np.array_equal(decode_rles(rles), m)
    assert np.array_equal(rle_area(rles), m.sum(axis=(1, 2)))
    # small batches give the same answer as one big batch
    assert encode_masks(m, batch_size=1) == rles
    assert encode_masks(list(m)) == rles


def test_rle_bbox_from_mask():
    m = np.zeros((1, 50, 60), bool)
    m[0, 10:20, 30:45] = True
    assert rle_bbox(encode_masks(m)).tolist() == [[30.0, 10.0, 15.0, 10.0]]


def test_encode_crops_pastes_and_clips():
    rng = np.random.default_rng(1)
    crops = [rng.random((7, 9)) > 0.4 for _ in range(4)]
    offsets = [(-3, -4), (10, 12), (36, 25), (2, 2)]
    full = np.zeros((4, 40, 30), bool)
    for i, (c, (y, x)) in enumerate(zip(crops, offsets)):
        for a in range(7):
            for b in range(9):
                if 0 <= y + a < 40 and 0 <= x + b < 30:
                    full[i, y + a, x + b] = c[a, b]
    assert np.array_equal(decode_rles(encode_crops(crops, offsets, (40, 30))), full)


def test_decode_crop_equals_window_of_full_decode():
    m = random_masks(seed=3)
    rles = encode_masks(m)
    for r, mm in zip(rles, m):
        for win in [(0, 0, 41, 29), (3, 4, 20, 9), (10, 0, 41, 5), (-3, -3, 60, 60), (5, 5, 5, 9)]:
            y0, x0, y1, x1 = win
            assert np.array_equal(decode_crop(r, win), mm[max(0, y0):y1, max(0, x0):x1])


def test_area_of_more_than_255_masks():
    # pycocotools 2.0.11 + numpy 2 overflows for >255 RLEs in one area() call
    m = np.zeros((300, 8, 8), bool)
    m[:, :2, :3] = True
    assert rle_area(encode_masks(m)).tolist() == [6] * 300


def test_check_rle_rejects_malformed():
    good = encode_masks(random_masks(n=3))[2]
    check_rle(good, (41, 29))
    assert sum(rle_runs(good["counts"])) == 41 * 29
    with pytest.raises(RLEError, match="does not match the image size"):
        check_rle(good, (40, 29))
    with pytest.raises(RLEError, match="must be a str"):
        check_rle({"size": [41, 29], "counts": good["counts"].encode()})
    with pytest.raises(RLEError, match="cover"):
        check_rle({"size": [41, 30], "counts": good["counts"]})
    with pytest.raises(RLEError):
        check_rle({"size": [41, 29], "counts": good["counts"][:-1] + "\x7f"})
    with pytest.raises(RLEError, match="size"):
        check_rle({"size": [41], "counts": good["counts"]})
    with pytest.raises(RLEError):
        check_rle([1, 2, 3])


def test_detections_json_round_trip_and_ops():
    m = random_masks(n=6)
    d = Detections.from_masks(m, [0.1, 0.9, 0.5, 0.3, 0.7, 0.2])
    back = Detections.from_json(json.loads(json.dumps(d.to_json())))
    assert back.rles == d.rles and np.allclose(back.scores, d.scores) and back.size == (41, 29)
    top = d.top(2)
    assert top.scores.tolist() == [0.9, 0.7]
    assert np.array_equal(top.masks(), m[[1, 4]])
    assert len(d.filter(min_area=1)) == 5  # the empty mask is dropped
    assert len(Detections.concat([d, top])) == 8
    with pytest.raises(ValueError, match="scores"):
        Detections(d.rles, [0.5], d.size)


def test_result_entries_and_gt_dataset_load_in_pycocotools():
    m = random_masks(n=5)[2:]
    d = Detections.from_masks(m, [0.9, 0.8, 0.7])
    gt = coco_from_dataset(gt_dataset([{"id": 4, "file_name": "x.png", "size": (41, 29),
                                        "rles": encode_masks(m)}]))
    assert len(gt.getAnnIds()) == 3
    assert [a["area"] for a in gt.loadAnns(gt.getAnnIds())] == m.sum(axis=(1, 2)).tolist()
    entries = result_entries(4, d)
    assert entries[0]["category_id"] == 1 and entries[0]["image_id"] == 4
    assert entries[0]["bbox"] == rle_bbox([d.rles[0]])[0].tolist()
    json.dumps(entries)  # JSON-ready
    res = load_results(gt, entries)
    assert len(res.getAnnIds()) == 3
    assert len(load_results(gt, []).getAnnIds()) == 0


def test_encode_equals_pycocotools_on_edge_cases():
    """Masks touching every border, single pixels, full columns, 1xN and Nx1 images."""
    rng = np.random.default_rng(7)
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(1, 12, 2))
        m = rng.random((h, w)) > rng.uniform(0.1, 0.9)
        ref = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))["counts"].decode()
        assert encode_masks(m[None])[0]["counts"] == ref, m


def test_detections_from_model_garden_outputs():
    """Box-relative masks pasted with Model Garden's own mask_ops, padding dropped."""
    from helpers.infer.model import detections_from_model_garden

    masks = np.zeros((4, 28, 28), np.float32)
    masks[0] = 1.0  # fills its box
    masks[1, :14, :] = 0.9  # upper half of its box
    boxes = np.array([[10, 20, 40, 60], [50, 0, 90, 30], [0, 0, 0, 0], [0, 0, 0, 0]], np.float32)  # yxyx
    d = detections_from_model_garden(masks, boxes, np.array([0.9, 0.8, 0.0, 0.0]), (100, 120),
                                     num_detections=2, chunk=1)
    assert len(d) == 2 and d.size == (100, 120)
    x, y, w, h = d.boxes[0]
    assert abs(x - 20) <= 2 and abs(y - 10) <= 2 and abs(w - 40) <= 3 and abs(h - 30) <= 3
    m = d.masks()
    assert m[0, 25, 40] and not m[0, 60, 40]
    assert m[1, 55, 15] and not m[1, 85, 15]  # only the upper half
    assert len(detections_from_model_garden(masks, boxes, np.zeros(4), (100, 120), num_detections=0)) == 0
