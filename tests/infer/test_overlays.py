import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from helpers.detections import Detections  # noqa: E402
from helpers.rle import encode_masks  # noqa: E402
from helpers.infer.evaluate import evaluate  # noqa: E402
from helpers.infer.overlays import (COLORS, eval_overlay, eval_overlay_array, eval_overlays, figure_png,  # noqa: E402
                              prediction_overlay, score_histogram)

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
    fig = prediction_overlay(image, dets, title="test image", score_threshold=0.7)
    assert "2 detections, 1 with score >= 0.7" in fig._suptitle.get_text()
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
