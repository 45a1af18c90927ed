"""Notebook 06 at the model's pixel size (helpers.infer.own_images): an image's µm per pixel is
its file's, else ``pixel_size_um``, else the model's (assumed, with a note); an image of another
pixel size is resized to the model's before prediction, and its nuclei are mapped back onto its
own pixels, so every export is in them. On the demo model (0.25 µm/px, the course data's 40x)."""
import csv
import json

import cv2
import numpy as np
import pytest
import tifffile

from helpers.detections import Detections
from helpers.infer import own_images, tiling
from helpers.infer.instance_metrics import matching
from helpers.pixel_size import read_pixel_size, tiff_resolution


def _half(rgb):
    """A 20x copy of a 40x image: half the pixels a side, averaged (cv2 INTER_AREA)."""
    return cv2.resize(rgb, (rgb.shape[1] // 2, rgb.shape[0] // 2), interpolation=cv2.INTER_AREA)


def _tiff(path, rgb, um):
    tifffile.imwrite(path, rgb, photometric="rgb", **tiff_resolution(um))
    return path


def _png(path, rgb):
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


@pytest.fixture(scope="module")
def originals(demo_copy):
    """The demo test images, {name: RGB}: 256 px at the demo model's 0.25 µm/px."""
    paths = sorted(own_images.default_source(demo_copy).glob("*.png"))
    return {f"img{k}": cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for k, p in enumerate(paths)}


@pytest.fixture(scope="module")
def runs(demo_copy, originals, tmp_path_factory):
    """Three runs of notebook 06 (plain pass only, to be quick), {run: its report}, of each image's
    20x copy (half the pixels a side) and its original:
    ``tagged``: <name>_20x.tif, the 20x copy with 0.5 µm/px in its TIFF tags;
    ``param``: <name>_20x.png (its file says no size) and <name>_40x.tif (0.25 in its tags), with pixel_size_um=0.5;
    ``neither``: <name>_20x.png without pixel_size_um."""
    root = tmp_path_factory.mktemp("pixel_size")
    for name in ("tagged", "param", "neither"):
        (root / name).mkdir()
    for name, rgb in originals.items():
        _tiff(root / "tagged" / f"{name}_20x.tif", _half(rgb), 0.5)
        _png(root / "param" / f"{name}_20x.png", _half(rgb))
        _tiff(root / "param" / f"{name}_40x.tif", rgb, 0.25)
        _png(root / "neither" / f"{name}_20x.png", _half(rgb))
    given = {"tagged": None, "param": 0.5, "neither": None}
    return {name: own_images.predict_own_images(demo_copy, root / name, run=name, tta=[], progress=False,
                                                pixel_size_um=um)
            for name, um in given.items()}


def _labels(report, stem):
    return tifffile.imread(report.out_dir / f"{stem}.labels.tif")


def _csv(report, stem):
    with open(report.out_dir / f"{stem}.csv") as f:
        return list(csv.DictReader(f))


def _f1(run, stem, reference, names):
    """F1 at IoU 0.5 of run ``run``'s <name>_<stem> label images against ``reference``'s
    <name>_40x ones, their matches and misses pooled over the images, on the 40x grid (the 20x
    label images enlarged x2, nearest neighbour)."""
    tp = fp = fn = 0
    for name in names:
        truth = _labels(reference, f"{name}_40x")
        up = cv2.resize(_labels(run, f"{name}_{stem}"), truth.shape[::-1], interpolation=cv2.INTER_NEAREST)
        m = matching(truth, up)
        tp, fp, fn = tp + m["TP"], fp + m["FP"], fn + m["FN"]
    return 2 * tp / (2 * tp + fp + fn)


def test_a_20x_tiff_is_predicted_at_x2_and_exported_in_its_own_pixels(runs, originals):
    report, text = runs["tagged"], runs["tagged"].format()
    assert ("img0_20x.tif: 0.5 µm/px (TIFF resolution tags), the model's 0.25 µm/px: predicted at x2.00, "
            "results mapped back") in text
    assert "img0_20x.tif: 256 x 256 px as the model sees it" in text
    for name, rgb in originals.items():
        labels = _labels(report, f"{name}_20x")
        assert labels.shape == _half(rgb).shape[:2] and labels.max() > 5
        coco = json.loads((report.out_dir / f"{name}_20x.coco.json").read_text())
        assert {tuple(e["segmentation"]["size"]) for e in coco} == {labels.shape}
        assert read_pixel_size(report.out_dir / f"{name}_20x.labels.tif").um == pytest.approx(0.5)
        # the same pixels at the same size, told by pixel_size_um instead of the file: the same nuclei
        np.testing.assert_array_equal(labels, _labels(runs["param"], f"{name}_20x"))
    settings = json.loads((report.out_dir / "run.json").read_text())["settings"]
    assert settings["model pixel size (um)"] == 0.25  # a stage of another pixel size is another run


def test_a_file_without_a_size_takes_pixel_size_um_and_without_it_the_models(runs, originals):
    param, neither = runs["param"].format(), runs["neither"].format()
    assert "img0_20x.png: 0.5 µm/px (parameter pixel_size_um), the model's 0.25 µm/px: predicted at x2.00" in param
    assert ("img0_40x.tif: its file says 0.25 µm/px (TIFF resolution tags); that is used, not pixel_size_um = 0.5"
            in param)
    assert "img0_40x.tif: 0.25 µm/px (TIFF resolution tags), the model's 0.25 µm/px: within 5%, predicted as it is" \
        in param
    assert ("img0_20x.png: pixel size unknown (the file does not say it and pixel_size_um is not set): assumed the "
            "model's 0.25 µm/px") in neither
    assert _labels(runs["neither"], "img0_20x").shape == _half(originals["img0"]).shape[:2]
    assert "area_um2" not in _csv(runs["neither"], "img0_20x")[0]  # an assumed size gives no µm


def test_micron_columns_use_each_images_own_pixel_size(runs, originals):
    for report, stem, um in ((runs["tagged"], "img0_20x", 0.5), (runs["param"], "img0_40x", 0.25)):
        rows = _csv(report, stem)
        assert len(rows) > 5
        for r in rows:
            assert float(r["area_um2"]) == pytest.approx(float(r["area_px2"]) * um * um, rel=1e-5)
            assert float(r["centroid_x_um"]) == pytest.approx(float(r["centroid_x_px"]) * um, rel=1e-5)
        assert json.loads((report.out_dir / f"{stem}.geojson").read_text())["properties"]["pixel_size_um"] == um
    # the same nuclei measured at 20x and at 40x: about the same size in µm² (a pixel size wrong by
    # 2x would make it 4x, or 1/4). The median nucleus at 20x / at 40x, measured on four demo trainings
    # (unseeded): 0.98 and 0.95, 1.30 and 0.93, 0.89 and 0.89, 1.58 (img0 in a CI run); the bound is
    # halfway to 4x in the log
    for name in originals:
        area_20x = np.median([float(r["area_um2"]) for r in _csv(runs["tagged"], f"{name}_20x")])
        area_40x = np.median([float(r["area_um2"]) for r in _csv(runs["param"], f"{name}_40x")])
        assert 1 / 2 < area_20x / area_40x < 2, (name, area_20x, area_40x)


def test_rescaled_the_20x_copy_is_predicted_as_the_40x_original_is(runs, originals):
    """F1 at IoU 0.5 against the 40x originals' nuclei, on their grid: the 20x copies rescaled
    (by their TIFF tags) and as they are (their files say nothing, nothing is given)."""
    rescaled = _f1(runs["tagged"], "20x", runs["param"], originals)
    as_it_is = _f1(runs["neither"], "20x", runs["param"], originals)
    # measured on four demo trainings (unseeded): rescaled 0.95, 0.87, 0.86, 0.75; as it is 0.63, 0.59,
    # 0.68, 0.65. The demo model is small and unseeded, so only the direction is asserted here; the
    # size of the gain is measured on the real data by benchmarks/bench_rescale_20x.py
    assert rescaled > as_it_is, (rescaled, as_it_is)


def test_an_image_too_large_at_the_models_pixel_size_is_skipped_and_named(demo_copy, tmp_path):
    src = tmp_path / "large"
    src.mkdir()
    tifffile.imwrite(src / "big_20x.tif", np.zeros((5000, 5000), np.uint8), compression="zlib",
                     **tiff_resolution(0.5))  # 25 Mpx, 100 Mpx at the model's 0.25 µm/px
    report = own_images.predict_own_images(demo_copy, src, run="large", progress=False)
    assert not report.exported
    assert report.skipped[str(src / "big_20x.tif")] == (
        "resized x2.00 to the model's pixel size, 10000 x 10000 px (100 Mpx) is more than the 64 Mpx one image may "
        "hold here: crop it into regions (e.g. in QuPath) and predict those")


def test_masks_are_mapped_back_where_the_images_own_pixels_have_them():
    """Disks drawn at twice (and 0.6 times) an image's pixels, mapped back, against the same disks
    drawn on its pixels: in place (no half-pixel shift), the same size, scores kept. Measured:
    mean IoU 0.953 and 0.892, mean shift (-0.13, -0.14) and (0.00, -0.01) px, area 0.997 and 0.988."""
    rng = np.random.default_rng(0)
    size = (151, 127)

    def disks(hw, centres, radii):  # drawn on a grid of hw pixels over the image (an ellipse when resized)
        fy, fx = hw[0] / size[0], hw[1] / size[1]
        yy, xx = np.mgrid[:hw[0], :hw[1]]
        return np.array([((yy + 0.5) / fy - cy) ** 2 + ((xx + 0.5) / fx - cx) ** 2 <= r * r
                         for (cy, cx), r in zip(centres, radii)])

    centres, radii = rng.uniform(12, 115, (40, 2)), rng.uniform(3, 9, 40)
    truth = disks(size, centres, radii)
    for f in (2.0, 0.6):
        seen = Detections.from_masks(disks(tiling.scaled_size(size, f), centres, radii), np.linspace(1, 0.5, 40))
        back = tiling.map_back(seen, size)
        assert back.size == size and np.array_equal(back.scores, seen.scores)
        masks = back.masks()
        iou = (masks & truth).sum((1, 2)) / (masks | truth).sum((1, 2))
        shift = np.array([np.argwhere(m).mean(0) - np.argwhere(t).mean(0) for m, t in zip(masks, truth)])
        assert iou.mean() > 0.88 and np.abs(shift.mean(0)).max() < 0.15, (f, iou.mean(), shift.mean(0))
        assert masks.sum() / truth.sum() == pytest.approx(1.0, abs=0.02)  # ties kept or dropped alike: 4-7% off
    one_pixel = Detections.from_masks(np.pad(np.ones((1, 1, 1), bool), ((0, 0), (20, 19), (20, 19))), [0.9])
    assert len(tiling.map_back(one_pixel, (10, 10))) == 0  # too small to cover a pixel's centre there


def test_the_rescale_factor():
    assert own_images.rescale_factor(0.5, 0.25) == 2.0 and own_images.rescale_factor(0.125, 0.25) == 0.5
    assert own_images.rescale_factor(0.26, 0.25) == 1.0  # within 5%
    assert own_images.rescale_factor(None, 0.25) == own_images.rescale_factor(0.5, None) == 1.0
    image = np.zeros((100, 60, 3), np.uint8)
    assert tiling.rescale_image(image, 2.0).shape == (200, 120, 3)
    assert tiling.rescale_image(image, 1.0) is image


def test_a_stage_of_another_pixel_size_is_another_run(runs, demo_copy, originals, tmp_path):
    """The run's settings hold the model's pixel size: run ``tagged`` again with the stage
    recorded as having learnt at 20x is refused, naming it, before anything is predicted."""
    _tiff(tmp_path / "img0_20x.tif", _half(originals["img0"]), 0.5)
    record_path = demo_copy.checkpoints / "all" / "stage.json"
    saved = record_path.read_text()
    try:
        record_path.write_text(json.dumps({**json.loads(saved), "pixel_size_um": 0.5}))
        with pytest.raises(own_images.OwnImagesError, match=r"model pixel size \(um\): 0\.25 then, 0\.5 now"):
            own_images.predict_own_images(demo_copy, tmp_path, run="tagged", tta=[], progress=False)
    finally:
        record_path.write_text(saved)
