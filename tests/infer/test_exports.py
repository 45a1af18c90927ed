"""Per-image exports (helpers.infer.exports): QuPath GeoJSON, label image, measurements CSV,
COCO results and overlay, all holding the same nuclei under the same ids."""
import csv
import json

import numpy as np
import pytest

from helpers.detections import Detections
from helpers.infer import exports
from helpers.infer.segmentation import DEFAULT_RULE, SegmentationRule

# |polygon area - mask area| <= 10% of the mask + 1 px: the outline follows the pixels' outer
# edges, mitred at corners, then simplified within 0.5 px (measured: +13% at worst on 6-7 px
# nuclei, 3% on average)
AREA_TOLERANCE = (0.10, 1.0)


def ellipses(n, size=(300, 340), seed=0):
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    crops, offsets = [], []
    for _ in range(n):
        r, e = rng.integers(2, 15), rng.uniform(0.5, 1)
        cy, cx = rng.integers(0, h), rng.integers(0, w)
        y0, x0, y1, x1 = max(cy - r, 0), max(cx - r, 0), min(cy + r + 1, h), min(cx + r + 1, w)
        crops.append((((yy[y0:y1, x0:x1] - cy) / e) ** 2 + (xx[y0:y1, x0:x1] - cx) ** 2) <= r * r)
        offsets.append((y0, x0))
    return Detections.from_crops(crops, offsets, rng.uniform(0.3, 1.0, n), size)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("exports")
    dets = ellipses(250)
    image = np.random.default_rng(1).integers(0, 256, dets.size + (3,), dtype=np.uint8)
    return out, dets, image, exports.export_image(out, "tile 7", image, dets)


def test_every_file_is_written_whole_and_named_for_the_image(exported):
    out, dets, _, ex = exported
    assert set(ex.files) == {"geojson", "labels", "csv", "coco", "overlay"}
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in ex.files.values())  # no temp files
    entries = json.loads(ex.files["coco"].read_text())
    assert len(entries) == len(dets) and entries[0]["image_id"] == "tile 7"  # COCO keeps every detection
    assert ex.files["overlay"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_geojson_reads_back_as_valid_qupath_detections_of_the_masks_area(exported):
    import tifffile
    from scipy import ndimage
    from shapely.geometry import shape

    _, _, _, ex = exported
    gj = json.loads(ex.files["geojson"].read_text())
    labels = tifffile.imread(ex.files["labels"])
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == ex.nuclei == labels.max() > 150
    rel, absolute = AREA_TOLERANCE
    for k, f in enumerate(gj["features"], start=1):
        geom = shape(f["geometry"])
        assert geom.is_valid and geom.geom_type in ("Polygon", "MultiPolygon")
        assert f["properties"]["objectType"] == "detection" and f["id"] == f"nucleus-{k}"
        assert f["properties"]["classification"]["name"] == "Nucleus"
        assert set(f["properties"]["measurements"]) == set(exports.MEASUREMENTS)
        mask = ndimage.binary_fill_holes(labels == k)  # outer contours: holes are filled
        assert abs(geom.area - mask.sum()) <= rel * mask.sum() + absolute, (k, geom.area, mask.sum())
        ys, xs = np.nonzero(mask)  # in pixel coordinates, origin at the top-left corner
        minx, miny, maxx, maxy = geom.bounds
        assert abs(minx - xs.min()) <= 0.5 and abs(maxx - (xs.max() + 1)) <= 0.5
        assert abs(miny - ys.min()) <= 0.5 and abs(maxy - (ys.max() + 1)) <= 0.5


def test_label_image_and_csv_agree(exported):
    import tifffile

    _, dets, image, ex = exported
    labels = tifffile.imread(ex.files["labels"])
    assert labels.dtype == np.uint16 and labels.shape == dets.size
    with ex.files["csv"].open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(exports.CSV_COLUMNS)
    ids = [int(r["id"]) for r in rows]
    assert ids == list(range(1, labels.max() + 1)) == sorted(np.unique(labels[labels > 0]).tolist())
    for r in rows[:: max(1, len(rows) // 25)]:
        ys, xs = np.nonzero(labels == int(r["id"]))
        assert float(r["area_px2"]) == len(ys)
        assert float(r["centroid_x_px"]) == pytest.approx(xs.mean() + 0.5, abs=1e-3)
        assert float(r["centroid_y_px"]) == pytest.approx(ys.mean() + 0.5, abs=1e-3)
        assert 0 < float(r["solidity"]) <= 1 and 0 <= float(r["eccentricity"]) < 1
    # ids follow the score, and each row carries its nucleus's score
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True) and min(scores) >= DEFAULT_RULE.min_score


def test_the_rule_decides_what_the_exports_keep(tmp_path):
    """A lower threshold exports the nuclei it keeps, and only those, in every file."""
    masks = np.zeros((3, 30, 30), bool)
    masks[0, 2:8, 2:8] = masks[1, 12:18, 12:18] = masks[2, 22:28, 22:28] = True
    dets = Detections.from_masks(masks, [0.9, 0.4, 0.2])
    image = np.full((30, 30, 3), 200, np.uint8)
    for rule, n in ((DEFAULT_RULE, 1), (SegmentationRule(min_score=0.3), 2), (SegmentationRule(min_score=0.1), 3)):
        ex = exports.export_image(tmp_path / str(n), "x", image, dets, rule, overlay=False)
        assert ex.nuclei == n
        assert len(json.loads(ex.files["geojson"].read_text())["features"]) == n
        assert len(ex.files["csv"].read_text().strip().splitlines()) == n + 1


def test_haematoxylin_density_is_higher_on_purple_nuclei(tmp_path):
    image = np.full((40, 40, 3), 235, np.uint8)  # pale background
    image[5:15, 5:15] = (80, 40, 140)            # haematoxylin purple
    image[25:35, 25:35] = (230, 140, 190)        # eosin pink
    masks = np.zeros((2, 40, 40), bool)
    masks[0, 5:15, 5:15] = masks[1, 25:35, 25:35] = True
    ex = exports.export_image(tmp_path, "stain", image, Detections.from_masks(masks, [0.9, 0.8]), overlay=False)
    with ex.files["csv"].open() as f:
        purple, pink = (float(r["haematoxylin_od_mean"]) for r in csv.DictReader(f))
    assert purple > 0.5 > 0.1 > pink and "overlay" not in ex.files


def test_no_nuclei_writes_empty_exports(tmp_path):
    import tifffile

    ex = exports.export_image(tmp_path, "blank", np.zeros((16, 16, 3), np.uint8), Detections.empty((16, 16)))
    assert ex.nuclei == 0 and json.loads(ex.files["geojson"].read_text())["features"] == []
    assert ex.files["csv"].read_text().strip() == ",".join(exports.CSV_COLUMNS)
    assert not tifffile.imread(ex.files["labels"]).any()
    with pytest.raises(ValueError, match="blank: the image is"):
        exports.export_image(tmp_path, "blank", np.zeros((8, 16, 3), np.uint8), Detections.empty((16, 16)))


def test_label_images_past_65535_nuclei_are_uint32():
    side = 260  # 67,600 one-pixel detections
    crops = [np.ones((1, 1), bool)] * side * side
    offsets = [(y, x) for y in range(side) for x in range(side)]
    dets = Detections.from_crops(crops, offsets, np.linspace(1, 0.5, side * side), (side, side))
    labels = dets.label_image()
    assert labels.dtype == np.uint32 and labels.max() == side * side and labels[0, 0] == 1


def test_units_are_named_and_a_known_pixel_size_is_carried(tmp_path):
    """Every CSV column names its unit; with the pixel size the CSV adds µm, the TIFF's resolution
    tags and the GeoJSON carry it; without one, nothing claims a physical size."""
    import tifffile

    masks = np.zeros((2, 40, 40), bool)
    masks[0, 2:12, 2:8] = masks[1, 20:30, 20:30] = True
    dets = Detections.from_masks(masks, [0.9, 0.8])
    image = np.full((40, 40, 3), 200, np.uint8)
    plain = exports.export_image(tmp_path / "plain", "x", image, dets)
    header = plain.files["csv"].read_text().splitlines()[0].split(",")
    assert header == list(exports.CSV_COLUMNS) and "area_px2" in header and "perimeter_px" in header
    with tifffile.TiffFile(plain.files["labels"]) as tif:
        assert "XResolution" not in tif.pages[0].tags or tif.pages[0].tags["ResolutionUnit"].value == 1
    assert "properties" not in json.loads(plain.files["geojson"].read_text())

    sized = exports.export_image(tmp_path / "sized", "x", image, dets, pixel_size_um=0.25)
    with sized.files["csv"].open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [*exports.CSV_COLUMNS, *exports.MICRON_COLUMNS]
    assert float(rows[0]["area_um2"]) == pytest.approx(60 * 0.0625) and float(rows[0]["area_px2"]) == 60
    assert float(rows[1]["centroid_x_um"]) == pytest.approx(25.0 * 0.25)
    with tifffile.TiffFile(sized.files["labels"]) as tif:
        tags = tif.pages[0].tags
        x_res = tags["XResolution"].value
        assert tags["ResolutionUnit"].value == 3 and x_res[0] / x_res[1] == pytest.approx(1e4 / 0.25)  # px per cm
    gj = json.loads(sized.files["geojson"].read_text())
    assert gj["properties"]["pixel_size_um"] == 0.25
    assert gj["features"][0]["properties"]["measurements"]["area_um2"] == pytest.approx(3.75)
