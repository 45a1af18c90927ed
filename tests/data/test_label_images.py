"""Image + instance-label pairs (helpers/data/label_images.py), imported through helpers/data/layouts.py."""
import numpy as np
import pytest
import tifffile
from PIL import Image

from _annotation_support import mask_pairs
from helpers.data import label_images, layouts
from helpers.data.imported import ImportOptions, read_record
from helpers.data.manifest import MANIFEST_NAME, read_manifest
from helpers.data.dataset import DatasetError, open_dataset, read_masks



def test_label_pairs_round_trip_to_the_same_nuclei(course, tmp_path):
    pairs = label_images.export_label_pairs(course, tmp_path / "pairs", pixel_size_um=0.5)
    assert layouts.detect_layout(pairs) == "labels" and layouts.detect_layout(course) == "course"
    back = layouts.import_dataset(pairs, tmp_path / "imported")
    imported = open_dataset(back)
    for ma, mb in mask_pairs(course, back):
        overlap = ma.sum(axis=0) > 1  # a label image gives an overlapped pixel to one nucleus
        assert len(ma) == len(mb)
        assert np.array_equal(ma[:, ~overlap], mb[:, ~overlap])
    assert list((tmp_path / "pairs").rglob("*")) and not list(tmp_path.glob(".imported.*"))  # no temp left
    record = read_record(back)  # the pixel size the label TIFFs record travels with the dataset
    assert record["layout"] == "labels" and {v["pixel_size_um"] for v in record["images"].values()} == {0.5}
    rows = read_manifest(back / MANIFEST_NAME)
    assert sorted(r["image_id"] for r in rows) == imported.train_ids and all(r["n_nuclei"] > 0 for r in rows)
    with pytest.raises(DatasetError, match="already exists and is not empty; nothing was overwritten"):
        layouts.import_dataset(pairs, tmp_path / "imported")  # never over a folder that holds something


def _pair(root, name="a", labels=None, image=None, suffix=".tif"):
    (root / "images" / name).parent.mkdir(parents=True, exist_ok=True)
    (root / "labels" / name).parent.mkdir(parents=True, exist_ok=True)
    image = np.full((32, 32, 3), 200, np.uint8) if image is None else image
    Image.fromarray(image).save(root / "images" / f"{name}.png")
    if labels is None:
        labels = np.zeros((32, 32), np.uint16)
        labels[2:8, 2:8], labels[10:20, 10:14] = 1, 7
    if suffix == ".tif":
        tifffile.imwrite(root / "labels" / f"{name}.tif", labels)
    else:
        Image.fromarray(labels).save(root / "labels" / f"{name}{suffix}")


def test_8_16_and_32_bit_label_images_are_read(tmp_path):
    for bits in (np.uint8, np.uint16, np.uint32):
        root = tmp_path / str(np.dtype(bits))
        labels = np.zeros((32, 32), bits)
        labels[2:8, 2:8], labels[10:20, 10:14] = 3, 250
        _pair(root, labels=labels)
        out = layouts.import_dataset(root, tmp_path / f"out-{np.dtype(bits)}")
        item = open_dataset(out).train[0]
        masks = read_masks(item, (32, 32))
        assert len(masks) == 2 and masks[0].sum() == 36 and masks[1].sum() == 40


@pytest.mark.parametrize("case, message", [
    ("size", r"is 16x32 \(WxH\) but its image is 32x32"),
    ("float", "not whole numbers"),
    ("colour", "a label image is one channel"),
    ("no label", "have no label image"),
    ("no image", "have no image"),
])
def test_bad_label_images_are_named(tmp_path, case, message):
    root = tmp_path / "src"
    if case == "size":
        _pair(root, labels=np.ones((32, 16), np.uint16))
    elif case == "float":
        _pair(root, labels=np.full((32, 32), 1.5, np.float32))
    elif case == "colour":
        _pair(root, labels=np.zeros((32, 32, 3), np.uint8), suffix=".png")
    elif case == "no label":
        _pair(root)
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "images" / "b.png")
    elif case == "no image":
        _pair(root)
        tifffile.imwrite(root / "labels" / "c.tif", np.zeros((32, 32), np.uint16))
    before = sorted((p.relative_to(root), p.stat().st_mtime_ns) for p in root.rglob("*"))
    with pytest.raises(DatasetError, match=message) as e:
        layouts.import_dataset(root, tmp_path / "out")
    assert str(root) in str(e.value)  # the user's own file or folder is named
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))
    assert sorted((p.relative_to(root), p.stat().st_mtime_ns) for p in root.rglob("*")) == before


def test_an_image_without_nuclei_is_skipped_with_a_note(tmp_path):
    root = tmp_path / "src"
    _pair(root, "a")
    _pair(root, "empty", labels=np.zeros((32, 32), np.uint16))
    notes = []
    out = layouts.import_dataset(root, tmp_path / "out", notes=notes)
    assert open_dataset(out).train_ids == ["a"]
    assert any("skipping" in n and "empty.png: it has no nucleus annotated" in n for n in notes)


def test_subfolders_become_ids_and_groups_and_the_pixel_size_parameter_fills_in(tmp_path):
    root = tmp_path / "src"
    for site in ("siteA", "siteB"):
        for k in range(2):
            _pair(root, f"{site}/img{k}")
    notes = []
    out = layouts.import_dataset(root, tmp_path / "out", ImportOptions(pixel_size_um=0.5), notes)
    rows = read_manifest(out / MANIFEST_NAME)
    assert {r["image_id"]: r["organ"] for r in rows} == {
        "siteA__img0": "siteA", "siteA__img1": "siteA", "siteB__img0": "siteB", "siteB__img1": "siteB"}
    assert {r["split"] for r in rows} == {"train", "val"}  # stratified by the folders
    assert {v["pixel_size_from"] for v in read_record(out)["images"].values()} == {"parameter pixel_size_um"}
    assert not any("pixel size" in n for n in notes)
    notes = []
    layouts.import_dataset(root, tmp_path / "out2", notes=notes)
    assert any("do not say their pixel size" in n for n in notes)


def test_a_folder_in_no_layout_is_named(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "x.txt").write_text("")
    with pytest.raises(DatasetError, match=r"holds none of the layouts.*found \['x.txt'\]"):
        layouts.detect_layout(tmp_path / "stuff")


def test_a_binary_mask_is_split_into_its_regions_with_a_note(tmp_path):
    root = tmp_path / "src"
    binary = np.zeros((32, 32), np.uint8)
    binary[2:8, 2:8], binary[10:20, 10:14], binary[24:28, 2:6] = 255, 255, 255
    _pair(root, labels=binary, suffix=".png")
    notes = []
    out = layouts.import_dataset(root, tmp_path / "out", notes=notes)
    assert len(read_masks(open_dataset(out).train[0], (32, 32))) == 3
    assert any("a binary mask, not instance labels" in n for n in notes)


def test_one_name_under_two_suffixes_is_refused(tmp_path):
    root = tmp_path / "src"
    _pair(root)
    tifffile.imwrite(root / "images" / "a.tif", np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"a.png and .*a.tif are one name under two suffixes"):
        layouts.import_dataset(root, tmp_path / "out")
