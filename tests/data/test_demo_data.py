import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.data.dataset import open_dataset, read_image, read_masks, validate_dataset
from helpers.data.demo_data import make_demo_dataset
from helpers.data.manifest import read_manifest, validate_against_manifest
from helpers.data.organs import organ_of


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "data", seed=0)


def files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in Path(root).rglob("*") if p.is_file()}


def test_layout_and_manifest(demo):
    ds = open_dataset(demo)
    assert len(ds.train) == 6 and len(ds.test) == 2
    organs = {organ_of(i) for i in ds.train_ids}
    assert len(organs) >= 3 and "unknown" not in organs
    spec = json.loads((demo / "test_img_ids.json").read_text())
    assert sorted(e["file_name"] for e in spec["images"]) == sorted(p.name for p in (demo / "test").iterdir())
    validate_dataset(ds, progress=False)
    rows = read_manifest(demo / "data_manifest.csv")
    validate_against_manifest(demo, rows, check_pixels=True, progress=False)
    assert {r["split"] for r in rows} == {"train", "val", "test"}


def test_masks_are_binary_nonempty_disjoint_and_some_touch(demo):
    ds = open_dataset(demo)
    radii, touching = [], 0
    for it in ds.train:
        for p in it.mask_paths:
            a = np.asarray(Image.open(p))
            assert a.dtype == np.uint8 and set(np.unique(a)) == {0, 255}
        m = read_masks(it)
        assert (m.sum(axis=0) <= 1).all()  # no overlaps
        radii += list(np.sqrt(m.sum(axis=(1, 2)) / np.pi))
        lab = (m * np.arange(1, len(m) + 1)[:, None, None]).sum(0)
        # 4-neighbour pixels with two different labels = touching nuclei
        touching += int(((lab[1:] != lab[:-1]) & (lab[1:] > 0) & (lab[:-1] > 0)).sum()
                        + ((lab[:, 1:] != lab[:, :-1]) & (lab[:, 1:] > 0) & (lab[:, :-1] > 0)).sum())
    assert touching > 0
    assert 3 <= min(radii) < 7 and 10 < max(radii) <= 15


def test_he_like_colours(demo):
    it = open_dataset(demo).train[0]
    img = read_image(it.image_path).astype(float)
    nuc = read_masks(it).any(axis=0)
    r, g, b = (img[..., c] for c in range(3))
    # background pink: red > blue > green; nuclei purple: darker, blue > red
    assert r[~nuc].mean() > b[~nuc].mean() > g[~nuc].mean()
    assert b[nuc].mean() > r[nuc].mean() and img[nuc].mean() < img[~nuc].mean() - 60
    assert img[~nuc].std() > 3  # textured, not flat


def test_deterministic_per_seed_and_noop_rerun(demo, tmp_path):
    again = make_demo_dataset(tmp_path / "a", seed=0)
    assert files(again) == files(demo)
    assert files(make_demo_dataset(tmp_path / "b", seed=1)) != files(demo)
    stamp = {p: p.stat().st_mtime_ns for p in again.rglob("*")}
    assert make_demo_dataset(again, seed=0) == again
    assert {p: p.stat().st_mtime_ns for p in again.rglob("*")} == stamp
    with pytest.raises(FileExistsError, match="not this demo dataset"):
        make_demo_dataset(again, seed=2)
    assert files(again) == files(demo)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_size_and_counts_parameters(tmp_path):
    root = make_demo_dataset(tmp_path / "d", seed=3, n_train=3, n_test=1, size=128)
    ds = open_dataset(root)
    assert len(ds.train) == 3 and len(ds.test) == 1
    assert read_image(ds.train[0].image_path).shape == (128, 128, 3)
