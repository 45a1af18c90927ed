import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from helpers.detections import Detections  # noqa: E402
from helpers.rle import decode_rle, encode_masks  # noqa: E402
from helpers.infer.evaluate import evaluate  # noqa: E402
from helpers.infer.overlays import (COLORS, eval_overlay, eval_overlay_array, eval_overlays, figure_png,  # noqa: E402
                              prediction_overlay, prediction_overlay_array, score_histogram, SCORE_CMAP)

H = W = 100


def square(y, x, s=12):
    m = np.zeros((H, W), bool)
    m[y:y + s, x:x + s] = True
    return m


@pytest.fixture()
def case():
    gt = np.stack([square(10, 10), square(10, 50), square(60, 60)])
    pred = np.stack([square(10, 10), square(80, 10)])  # one TP, one FP; GT 2 and 3 missed
    dets = Detections.from_masks(pred, [0.9, 0.6])
    res = evaluate({"img": dets}, {"img": gt})
    image = np.full((H, W, 3), 128, np.uint8)
    return image, encode_masks(gt), dets, res


def dominant(rgb):
    return int(np.argmax(rgb))


def test_eval_overlay_colours(case):
    image, gt, dets, res = case
    arr = eval_overlay_array(image, gt, dets, res.matches["img"])
    assert arr.shape == (H, W, 3) and arr.min() >= 0 and arr.max() <= 1
    assert dominant(arr[16, 16]) == 1  # TP interior: green
    assert dominant(arr[86, 16]) == 0  # FP: red
    assert dominant(arr[16, 56]) == 2 and dominant(arr[66, 66]) == 2  # missed: blue
    assert np.allclose(arr[10, 10], COLORS["tp"])  # outline opaque
    assert np.allclose(arr[40, 40], 128 / 255)  # background untouched
    fig = eval_overlay(image, gt, dets, res.matches["img"], title="img")
    assert "TP 1  FP 1  missed 2" in fig._suptitle.get_text()
    figs = eval_overlays({"img": image}, {"img": dets}, {"img": gt}, res)
    assert list(figs) == ["img"]


def test_eval_overlay_rejects_mismatched_match(case):
    image, gt, dets, res = case
    with pytest.raises(ValueError, match="same predictions and GT"):
        eval_overlay(image, gt[:2], dets, res.matches["img"])


def test_prediction_overlay_and_histogram(case, tmp_path):
    image, _, dets, _ = case
    fig = prediction_overlay(image, dets, title="test image", min_score=0.7)
    assert "2 detections, 1 drawn (score >= 0.7)" in fig._suptitle.get_text()
    assert [a.get_xlabel() for a in fig.axes[0].child_axes] == ["score"]  # the colour bar
    fig.savefig(tmp_path / "o.png")
    assert (tmp_path / "o.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="predictions are for"):
        prediction_overlay(np.zeros((50, 50, 3), np.uint8), dets)
    hist = score_histogram({"a": dets, "b": dets.top(1)}, bins=10)
    ax = hist.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a (n=2)", "b (n=1)"]
    single = score_histogram(dets, bins=10).axes[0]
    assert sum(p.get_height() for p in single.patches) == 2


def test_figure_png(case):
    _, _, dets, _ = case
    png = figure_png(score_histogram(dets))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


def test_prediction_overlay_draws_above_its_floor_in_colours_that_stand_out_on_h_and_e(case):
    image, _, dets, _ = case
    low, high = int(np.argmin(dets.scores)), int(np.argmax(dets.scores))
    floor = float(dets.scores[low] + dets.scores[high]) / 2
    canvas = prediction_overlay_array(image, dets, min_score=floor)
    painted = np.any(np.abs(canvas - image / 255.0) > 1e-6, axis=2)
    low_mask, high_mask = (decode_rle(dets.rles[i]).astype(bool) for i in (low, high))
    assert not painted[low_mask & ~high_mask].any()  # below the floor: not drawn
    assert painted[high_mask].all()
    everything = prediction_overlay_array(image, dets, min_score=0.0)
    assert np.any(np.abs(everything - image / 255.0) > 1e-6, axis=2)[low_mask].all()
    # every score's colour is bright and far from haematoxylin's purple and eosin's pink
    for score in np.linspace(0, 1, 11):
        r, g, b = SCORE_CMAP(score)[:3]
        assert g > 0.85 and max(r, g, b) - min(r, g, b) > 0.5, (score, r, g, b)
