import json
import shutil
import warnings

import numpy as np
import pytest
from PIL import Image

from helpers.data.dataset import (DatasetError, DatasetNote, open_dataset, read_image, read_mask, read_masks,
                             validate_dataset)


def first(ds):
    return ds.train[0]


def test_open_dataset_reads_the_course_layout(demo):
    ds = open_dataset(demo)
    assert len(ds.train) == 6 and len(ds.test) == 2
    it = ds.train[0]
    assert it.image_path == demo / "train" / it.image_id / "images" / f"{it.image_id}.png"
    assert [p.name for p in it.mask_paths] == sorted(p.name for p in (it.image_path.parents[1] / "masks").iterdir())
    spec = json.loads((demo / "test_img_ids.json").read_text())["images"]
    assert [(t.file_name, t.coco_id) for t in ds.test] == [(e["file_name"], e["id"]) for e in spec]
    assert all(t.image_path.is_file() for t in ds.test)


def test_read_image_and_masks(demo):
    it = first(open_dataset(demo))
    img = read_image(it.image_path)
    assert img.dtype == np.uint8 and img.shape == (256, 256, 3)
    assert np.array_equal(img, np.asarray(Image.open(it.image_path).convert("RGB")))
    masks = read_masks(it)
    assert masks.dtype == bool and masks.shape == (it.n_nuclei, 256, 256)
    for m, p in zip(masks, it.mask_paths):
        assert np.array_equal(m, np.asarray(Image.open(p)) == 255)


def test_validate_dataset_counts(demo):
    stats = validate_dataset(demo, progress=False)
    ds = open_dataset(demo)
    assert {k: s.n_nuclei for k, s in stats.items() if s.split == "train"} == {
        it.image_id: len(list((demo / "train" / it.image_id / "masks").glob("*.png"))) for it in ds.train}
    assert all((s.height, s.width) == (256, 256) for s in stats.values())


@pytest.mark.parametrize("folder", ["images", "masks"])
def test_missing_images_or_masks_folder(demo, folder):
    it = first(open_dataset(demo))
    shutil.rmtree(demo / "train" / it.image_id / folder)
    with pytest.raises(DatasetError, match=rf"{it.image_id}/{folder} is missing.*re-extract"):
        open_dataset(demo)


def test_missing_train_folder(tmp_path):
    with pytest.raises(DatasetError, match="train not found.*point at the folder"):
        open_dataset(tmp_path)


def test_mask_size_differs_from_image(demo):
    it = first(open_dataset(demo))
    p = it.mask_paths[2]
    Image.fromarray(np.pad(np.asarray(Image.open(p)), ((0, 4), (0, 0)))).save(p)
    with pytest.raises(DatasetError, match=rf"{p.name} is 256x260 \(WxH\) but its image is 256x256"):
        validate_dataset(demo, progress=False)


def test_empty_mask_is_skipped_with_a_note_and_not_counted(demo):
    it = first(open_dataset(demo))
    p = it.mask_paths[0]
    Image.fromarray(np.zeros((256, 256), np.uint8)).save(p)
    with pytest.raises(DatasetError, match=rf"{p.name} is empty.*holds no nucleus"):
        read_mask(p)
    with pytest.warns(DatasetNote, match=rf"skipping 1 empty mask.*{p.name}"):
        stats = validate_dataset(demo, progress=False)
    assert stats[it.image_id].n_nuclei == it.n_nuclei - 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", DatasetNote)  # the same note, already shown: not again
        assert len(read_masks(it)) == it.n_nuclei - 1


def test_non_binary_mask(demo):
    it = first(open_dataset(demo))
    p = it.mask_paths[1]
    a = np.asarray(Image.open(p)).copy()
    ys, xs = np.nonzero(a)
    a[ys[0], xs[0]] = 128
    Image.fromarray(a).save(p)
    with pytest.raises(DatasetError, match=rf"{p.name} is not binary.*threshold"):
        read_mask(p)
    with pytest.raises(DatasetError, match="not binary"):
        validate_dataset(demo, progress=False)


def test_zero_one_mask_is_accepted(demo):
    it = first(open_dataset(demo))
    p = it.mask_paths[0]
    a = np.asarray(Image.open(p)) // 255
    Image.fromarray(a.astype(np.uint8)).save(p)
    assert np.array_equal(read_mask(p), a == 1)


@pytest.mark.parametrize("mode", ["RGBA", "L"])
def test_rgba_or_grey_image_is_converted_with_a_note(demo, mode):
    it = first(open_dataset(demo))
    rgb = read_image(it.image_path)
    Image.fromarray(rgb).convert(mode).save(it.image_path)
    conversion = "RGBA: the alpha channel is dropped" if mode == "RGBA" else "greyscale: repeated into RGB"
    with pytest.warns(DatasetNote, match=rf"{it.image_id}.png is not 8-bit RGB: {conversion}"):
        img = read_image(it.image_path)
    assert img.shape == (256, 256, 3) and img.dtype == np.uint8
    if mode == "RGBA":
        assert np.array_equal(img, rgb)
    else:
        assert np.array_equal(img[..., 0], img[..., 1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetNote)
        ds = open_dataset(demo)
        validate_dataset(ds, progress=False)  # not an error
    assert any(conversion in n for n in ds.notes)


def test_duplicate_id_in_train_and_test(demo):
    ds = open_dataset(demo)
    t = ds.test[0]
    shutil.copytree(demo / "train" / ds.train[0].image_id, demo / "train" / t.image_id)
    d = demo / "train" / t.image_id / "images"
    (d / f"{ds.train[0].image_id}.png").rename(d / f"{t.image_id}.png")
    with pytest.raises(DatasetError, match=rf"duplicate id.*{t.image_id}.*remove it from one"):
        open_dataset(demo)


def test_duplicate_id_differing_in_case(demo):
    it = first(open_dataset(demo))
    shutil.copytree(demo / "train" / it.image_id, demo / "train" / it.image_id.lower())
    with pytest.raises(DatasetError, match="duplicate id.*differ only in case"):
        open_dataset(demo)


def test_duplicate_entry_in_test_json(demo):
    f = demo / "test_img_ids.json"
    spec = json.loads(f.read_text())
    spec["images"].append(dict(spec["images"][0], id=99))
    f.write_text(json.dumps(spec))
    with pytest.raises(DatasetError, match=r"duplicate file_name.*test_img_ids.json"):
        open_dataset(demo)


def test_second_png_in_images_folder(demo):
    it = first(open_dataset(demo))
    shutil.copy(it.image_path, it.image_path.with_name("copy.png"))
    with pytest.raises(DatasetError, match=rf"duplicate id.*keep only {it.image_id}.png"):
        open_dataset(demo)


def test_corrupt_image(demo):
    it = first(open_dataset(demo))
    it.image_path.write_bytes(b"not a png at all")
    with pytest.raises(DatasetError, match=rf"{it.image_id}.png is corrupt or truncated.*replace it"):
        validate_dataset(demo, progress=False)


def test_truncated_image_and_mask(demo):
    ds = open_dataset(demo)
    it = ds.train[1]
    data = it.image_path.read_bytes()
    it.image_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=rf"{it.image_id}.png is corrupt or truncated"):
        read_image(it.image_path)
    p = ds.train[0].mask_paths[3]
    mdata = p.read_bytes()
    p.write_bytes(mdata[: len(mdata) // 2])
    with pytest.raises(DatasetError, match=rf"{p.name} is corrupt or truncated"):
        read_mask(p)
    with pytest.raises(DatasetError, match="corrupt or truncated"):
        validate_dataset(demo, progress=False)


def test_test_json_misses_a_test_image(demo):
    f = demo / "test_img_ids.json"
    spec = json.loads(f.read_text())
    dropped = spec["images"].pop(0)["file_name"]
    f.write_text(json.dumps(spec))
    with pytest.raises(DatasetError, match=rf"misses test image\(s\) \['{dropped}'\].*add them"):
        open_dataset(demo)


def test_test_json_names_an_absent_file(demo):
    f = demo / "test_img_ids.json"
    spec = json.loads(f.read_text())
    spec["images"].append({"file_name": "TCGA-XX-0000.png", "id": 77, "height": 256, "width": 256})
    f.write_text(json.dumps(spec))
    with pytest.raises(DatasetError, match=r"names \['TCGA-XX-0000.png'\] but they are not in .*test"):
        open_dataset(demo)


def test_test_json_missing(demo):
    (demo / "test_img_ids.json").unlink()
    with pytest.raises(DatasetError, match="test_img_ids.json not found.*copy"):
        open_dataset(demo)


def test_test_image_size_differs_from_json(demo):
    f = demo / "test_img_ids.json"
    spec = json.loads(f.read_text())
    spec["images"][0]["height"] = 300
    f.write_text(json.dumps(spec))
    with pytest.raises(DatasetError, match=r"says TCGA-\S+\.png is 256x300 .* is 256x256.*fix that entry"):
        validate_dataset(demo, progress=False)
