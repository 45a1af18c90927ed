import math

import numpy as np
import pytest

from helpers.detections import Detections
from helpers.rle import encode_masks
from _ground_truth import load_ground_truth
from helpers.infer.evaluate import EvaluationError, evaluate
from helpers.tables import format_table


@pytest.fixture(scope="module")
def demo_gt(tmp_path_factory):
    """{image_id: (N, H, W) bool masks} of the generated demo dataset (train pool)."""
    from helpers.data.dataset import open_dataset, read_masks
    from helpers.data.demo_data import make_demo_dataset

    root = make_demo_dataset(tmp_path_factory.mktemp("demo") / "data", seed=0, n_train=4, n_test=1, size=256)
    ds = open_dataset(root)
    return {it.image_id: read_masks(it) for it in ds.train}, ds


def perfect(gt):
    return {i: Detections.from_masks(m, np.linspace(0.99, 0.5, len(m))) for i, m in gt.items()}


def test_perfect_predictions_score_one(demo_gt):
    gt, _ = demo_gt
    assert sum(len(m) for m in gt.values()) > 20
    res = evaluate(perfect(gt), gt)
    assert list(res.summary) == ["AP@100", "AP50@100", "AP75@100", "AP@1000", "AP50@1000", "AP75@1000"]
    assert all(v == pytest.approx(1.0) for v in res.summary.values())
    for row in res.per_image:
        assert row["AP@100"] == pytest.approx(1.0)
        assert row["TP50"] == row["n_gt"] and row["FP50"] == 0 and row["missed50"] == 0
    assert all(m.tp.all() and m.gt_matched.all() for m in res.matches.values())
    assert "AP@100" in res.format() and format_table(res.per_image).count("\n") == len(gt) + 1


def test_shifted_and_missing_predictions_score_less(demo_gt):
    gt, _ = demo_gt
    shifted = {i: Detections.from_masks(np.roll(m, 3, axis=2), np.linspace(0.99, 0.5, len(m)))
               for i, m in gt.items()}
    res_shift = evaluate(shifted, gt)
    assert res_shift.summary["AP@100"] < 0.9
    assert res_shift.summary["AP75@100"] < res_shift.summary["AP50@100"] + 1e-9

    first = sorted(gt)[0]
    half = dict(perfect(gt))
    n = len(gt[first])
    half[first] = Detections.from_masks(gt[first][: n // 2], np.linspace(0.99, 0.5, n // 2))
    res_half = evaluate(half, gt)
    assert res_half.summary["AP@100"] < 1.0
    row = next(r for r in res_half.per_image if r["image_id"] == first)
    assert row["missed50"] == n - n // 2 and row["TP50"] == n // 2 and row["AP@100"] < 1.0
    assert res_half.matches[first].gt_matched.tolist() == [True] * (n // 2) + [False] * (n - n // 2)
    others = [r for r in res_half.per_image if r["image_id"] != first]
    assert all(r["AP@100"] == pytest.approx(1.0) for r in others)


def grid_masks(rows=10, cols=10, cell=20, side=8):
    m = np.zeros((rows * cols, rows * cell, cols * cell), bool)
    for k in range(rows * cols):
        y, x = (k // cols) * cell, (k % cols) * cell
        m[k, y:y + side, x:x + side] = True
    return m


def test_max_dets_100_vs_1000():
    gt = grid_masks()  # 100 nuclei
    junk = np.zeros((150, 200, 200), bool)
    for k in range(150):  # 1-pixel false positives in the gaps, with higher scores
        junk[k, 10 + (k // 15) * 19 % 190, 12 + (k % 15) * 12] = True
    masks = np.concatenate([junk, gt])
    scores = np.concatenate([np.full(150, 0.9), np.full(100, 0.5)])
    res = evaluate({"img": Detections.from_masks(masks, scores)}, {"img": gt})
    assert res.summary["AP@100"] == pytest.approx(0.0)
    assert res.summary["AP@1000"] > 0.3
    m = res.matches["img"]
    assert m.considered.all() and m.fp[:150].all() and m.tp[150:].all()
    assert res.per_image[0]["FP50"] == 150 and res.per_image[0]["TP50"] == 100


def test_matches_flag_false_positives_in_prediction_order():
    gt = grid_masks(2, 2)
    fp = np.zeros((1,) + gt.shape[1:], bool)
    fp[0, 30:38, 30:38] = True
    masks = np.concatenate([gt[:1], fp, gt[2:]])  # GT 1 missed
    res = evaluate({"a": Detections.from_masks(masks, [0.9, 0.8, 0.7, 0.6])}, {"a": encode_masks(gt)})
    m = res.matches["a"]
    assert m.tp.tolist() == [True, False, True, True]
    assert m.fp.tolist() == [False, True, False, False]
    assert m.missed.tolist() == [False, True, False, False]


def test_bad_input():
    gt = {"a": grid_masks(2, 2), "b": grid_masks(2, 2)}
    preds = {"a": Detections.from_masks(gt["a"], [0.9] * 4)}
    with pytest.raises(EvaluationError, match="no predictions for 1 validation image"):
        evaluate(preds, gt)
    res = evaluate(preds, gt, missing="empty")
    assert res.summary["AP@100"] == pytest.approx(0.5, abs=0.01)  # 101-point interpolation
    with pytest.raises(EvaluationError, match="without ground truth"):
        evaluate({**preds, "zzz": preds["a"]}, gt)
    with pytest.raises(EvaluationError, match="predictions are"):
        evaluate({"a": Detections.from_masks(np.zeros((1, 5, 5), bool), [0.5])}, {"a": gt["a"]})
    # no GT and no predictions in an image -> AP undefined (nan), not an error
    res = evaluate({"e": Detections.empty((10, 10))}, {"e": []})
    assert math.isnan(res.summary["AP@100"])


def test_load_ground_truth(demo_gt):
    gt, ds = demo_gt
    ids = sorted(gt)[:2]
    loaded = load_ground_truth(ds, ids, progress=False)
    assert {i: len(v) for i, v in loaded.items()} == {i: len(gt[i]) for i in ids}
    with pytest.raises(EvaluationError, match="training pool"):
        load_ground_truth(ds, ["TCGA-ZZ-0000-01Z-00-DX1"], progress=False)


@pytest.mark.realdata
def test_real_image_perfect_and_capped(real_data):
    """One real 1000x1000 image: GT as predictions scores 1.0 at maxDets 1000; ranking
    all nuclei with maxDets 100 cannot reach it (the image has more than 100 nuclei)."""
    from helpers.data.dataset import open_dataset

    ds = open_dataset(real_data)
    item = min(ds.train, key=lambda it: it.n_nuclei)
    gt = load_ground_truth(ds, [item.image_id], progress=False)
    rles = gt[item.image_id]
    assert len(rles) == item.n_nuclei > 100
    res = evaluate({item.image_id: Detections(rles, np.linspace(1, 0.1, len(rles)), (1000, 1000))}, gt)
    assert res.summary["AP@1000"] == pytest.approx(1.0)
    assert res.summary["AP@100"] < 0.5
