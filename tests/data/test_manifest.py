import hashlib
import re
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from helpers.data.dataset import DatasetError, open_dataset
from helpers.data.manifest import (COLUMNS, REPO_MANIFEST, assign_shards, build_manifest, choose_val_split,
                              read_manifest, set_val_split, split_ids, summarize, validate_against_manifest,
                              write_manifest)
from helpers.data.organs import organ_of

SHARD_RE = re.compile(r"^(labeled|test)-([a-z]+)-(\d{5})-of-(\d{5})\.tfrecord$")


def real_like_rows():
    """Rows with the organ counts of the real training set (24 images) + 6 test."""
    counts = {"kidney": 6, "lung": 5, "breast": 5, "prostate": 4, "stomach": 2, "bladder": 1, "colon": 1}
    rows = [{"image_id": f"{o}-{i}", "split": "train", "organ": o, "n_nuclei": 10, "height": 1000,
             "width": 1000, "sha256": "0" * 64, "shard": ""} for o, n in counts.items() for i in range(n)]
    rows += [{"image_id": f"t{i}", "split": "test", "organ": "lung", "n_nuclei": 0, "height": 1000,
              "width": 1000, "sha256": "0" * 64, "shard": ""} for i in range(6)]
    return rows


def test_build_manifest_from_demo(demo):
    rows = build_manifest(demo, progress=False)
    ds = open_dataset(demo)
    assert [r["image_id"] for r in rows] == ds.train_ids + ds.test_ids
    for r in rows:
        it = ds.item(r["image_id"])
        assert r["organ"] == organ_of(r["image_id"]) != "unknown"
        assert r["sha256"] == hashlib.sha256(it.image_path.read_bytes()).hexdigest()
        assert (r["height"], r["width"]) == (256, 256)
        assert r["n_nuclei"] == (len(it.mask_paths) if r["split"] != "test" else 0)
        m = SHARD_RE.match(r["shard"])
        assert m and m.group(1) == ("test" if r["split"] == "test" else "labeled") and m.group(2) == r["organ"]
    assert len({r["shard"] for r in rows}) == len(rows)
    assert Counter(r["split"] for r in rows) == {"train": 5, "val": 1, "test": 2}


def test_write_read_roundtrip_is_atomic(demo, tmp_path):
    rows = build_manifest(demo, check_pixels=False, progress=False)
    out = write_manifest(rows, tmp_path / "m" / "data_manifest.csv")
    assert read_manifest(out) == rows
    assert [p.name for p in out.parent.iterdir()] == ["data_manifest.csv"]  # no temp left behind
    assert out.read_text().splitlines()[0] == ",".join(COLUMNS)


def test_read_manifest_errors(tmp_path):
    with pytest.raises(DatasetError, match="not found.*build_manifest"):
        read_manifest(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("image_id,split\nx,train\n")
    with pytest.raises(DatasetError, match="lacks column"):
        read_manifest(bad)
    bad.write_text(",".join(COLUMNS) + "\nx,train,lung,many,1,1,ab,s\n")
    with pytest.raises(DatasetError, match="line 2 is malformed"):
        read_manifest(bad)


def test_validate_against_manifest_ok_and_sha_mismatch(demo):
    rows = build_manifest(demo, progress=False)
    assert validate_against_manifest(demo, rows, check_pixels=True, progress=False)["images"] == \
        {"train": 5, "val": 1, "test": 2}
    it = open_dataset(demo).train[2]
    a = np.asarray(Image.open(it.image_path)).copy()
    a[0, 0] ^= 1
    Image.fromarray(a).save(it.image_path)
    with pytest.raises(DatasetError, match=rf"{it.image_id}.png: sha256 .* does not match the manifest.*re-acquire"):
        validate_against_manifest(demo, rows, progress=False)


def test_validate_against_manifest_counts(demo):
    rows = build_manifest(demo, check_pixels=False, progress=False)
    it = open_dataset(demo).train[0]
    it.mask_paths[-1].unlink()
    with pytest.raises(DatasetError, match=rf"holds {it.n_nuclei - 1} masks but the manifest says {it.n_nuclei}"):
        validate_against_manifest(demo, rows, progress=False)
    with pytest.raises(DatasetError, match=r"lacks image\(s\)"):
        validate_against_manifest(demo, rows + [dict(rows[0], image_id="TCGA-A7-EXTRA")], progress=False)
    with pytest.raises(DatasetError, match="not in the manifest"):
        validate_against_manifest(demo, rows[1:], progress=False)


def test_default_val_split_is_stratified_and_deterministic():
    rows = real_like_rows()
    val = choose_val_split(rows)
    organs = {r["image_id"]: r["organ"] for r in rows}
    assert len(val) == 4
    assert sorted(organs[v] for v in val) == ["breast", "kidney", "lung", "prostate"]
    assert choose_val_split(list(reversed(rows))) == val  # independent of row order
    assert choose_val_split(rows, seed=1) != val
    # never takes an organ's last training image; 1-image organs are never chosen
    big = choose_val_split(rows, n_val=20)
    left = Counter(organs[r["image_id"]] for r in rows if r["split"] == "train" and r["image_id"] not in big)
    assert set(left) == {"kidney", "lung", "breast", "prostate", "stomach", "bladder", "colon"}
    assert all(v >= 1 for v in left.values())


def test_split_ids_train_plus_val():
    rows = set_val_split(real_like_rows(), choose_val_split(real_like_rows()))
    tr, va, te = split_ids(rows, "train"), split_ids(rows, "val"), split_ids(rows, "test")
    assert (len(tr), len(va), len(te)) == (20, 4, 6)
    assert sorted(split_ids(rows, "train", "val")) == sorted(tr + va)
    with pytest.raises(ValueError, match="unknown split"):
        split_ids(rows, "training")
    with pytest.raises(ValueError, match="not labeled images"):
        set_val_split(rows, ["t0"])


def test_assign_shards_numbers_within_pool_and_organ():
    rows = assign_shards(real_like_rows())
    by = {r["image_id"]: r["shard"] for r in rows}
    assert by["kidney-0"] == "labeled-kidney-00000-of-00006.tfrecord"
    assert by["kidney-5"] == "labeled-kidney-00005-of-00006.tfrecord"
    assert by["t5"] == "test-lung-00005-of-00006.tfrecord"
    # the val choice does not rename shards (train and val share the labeled pool)
    rows2 = assign_shards(set_val_split(rows, choose_val_split(rows)))
    assert {r["image_id"]: r["shard"] for r in rows2} == by


def test_committed_manifest_is_consistent():
    rows = read_manifest(REPO_MANIFEST)
    s = summarize(rows)
    assert s["images"] == {"train": 20, "val": 4, "test": 6}
    assert s["nuclei"]["train"] + s["nuclei"]["val"] == 14598 and s["nuclei"]["test"] == 0
    assert all((r["height"], r["width"]) == (1000, 1000) for r in rows)
    assert all(r["organ"] == organ_of(r["image_id"]) for r in rows)
    assert all(re.fullmatch(r"[0-9a-f]{64}", r["sha256"]) for r in rows)
    assert {r["image_id"]: r["shard"] for r in assign_shards(rows)} == {r["image_id"]: r["shard"] for r in rows}
    assert split_ids(rows, "val") == choose_val_split(rows)
    assert sum(s["organ_nuclei"].values()) == 14598 and s["organ_nuclei"]["kidney"] == 5577


def test_real_dataset_matches_committed_manifest(real_data):
    s = validate_against_manifest(real_data, REPO_MANIFEST, progress=False)
    assert s["images"]["train"] + s["images"]["val"] == 24 and s["images"]["test"] == 6
    assert s["nuclei"]["train"] + s["nuclei"]["val"] == 14598
    ds = open_dataset(real_data)
    assert sum(it.n_nuclei for it in ds.train) == 14598
    assert all((t.height, t.width) == (1000, 1000) for t in ds.test)
    # regenerating from the folder (headers only) gives the committed manifest
    assert build_manifest(real_data, check_pixels=False, progress=False) == read_manifest(REPO_MANIFEST)
