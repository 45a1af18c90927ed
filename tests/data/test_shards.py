import re
import shutil
import time

import numpy as np
import pytest
from PIL import Image

from helpers.data.dataset import open_dataset, read_image, read_masks
from helpers.data.demo_data import make_demo_dataset
from helpers.data.manifest import (REPO_MANIFEST, choose_val_split, read_manifest, set_val_split, sha256_file,
                              split_ids)
from helpers.data.shards import (INDEX_NAME, ShardError, load_index, mask_box, read_shard, select_shards, verify_shards,
                            write_shards)

NAME_RE = re.compile(r"^(labeled|test)-[a-z]+-\d{5}-of-\d{5}\.tfrecord$")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "data", seed=0)


@pytest.fixture(scope="module")
def rows(demo):
    return read_manifest(demo / "data_manifest.csv")


@pytest.fixture(scope="module")
def built(demo, rows, tmp_path_factory):
    """Shards of the demo written once (tests that damage them use a copy)."""
    d = tmp_path_factory.mktemp("shards")
    write_shards(demo, rows, d, progress=False, verbose=False)
    return d


@pytest.fixture()
def shards(built, tmp_path):
    return shutil.copytree(built, tmp_path / "shards")


def test_index_lists_every_shard_with_size_and_sha(built, rows):
    idx = load_index(built)
    files = sorted(p.name for p in built.iterdir() if p.name != INDEX_NAME)
    assert [e["file"] for e in idx["shards"]] == files == sorted(r["shard"] for r in rows)
    for e in idx["shards"]:
        p = built / e["file"]
        assert NAME_RE.match(e["file"]) and e["organ"] in e["file"]
        assert e["size"] == p.stat().st_size and e["sha256"] == sha256_file(p)
        assert e["source_id"].isdigit()


def test_round_trip_with_model_garden_decoder(built, demo, rows):
    ds = open_dataset(demo)
    ids = {e["image_id"]: e for e in load_index(built)["shards"]}
    for it in ds.train:
        e = ids[it.image_id]
        d = read_shard(built / e["file"])  # Model Garden's TfExampleDecoder(include_mask=True)
        src = read_masks(it)
        assert d["image_id"] == it.image_id and d["source_id"] == e["source_id"]
        assert np.array_equal(d["image"], read_image(it.image_path))
        assert d["masks"].dtype == bool and np.array_equal(d["masks"], src)  # bit-identical
        assert np.array_equal(d["boxes"], np.array([mask_box(m) for m in src], np.float32))
        assert np.array_equal(d["areas"], src.sum(axis=(1, 2)).astype(np.float32))
        assert (d["classes"] == 1).all() and not d["is_crowd"].any()
        fast = read_shard(built / e["file"], fast=True)
        for k in ("image", "masks", "boxes", "areas", "source_id", "image_id"):
            assert np.array_equal(fast[k], d[k]), k


def test_test_shards_have_no_objects_and_coco_ids(built, demo):
    ds = open_dataset(demo)
    test = select_shards(built, splits=("test",))
    assert len(test) == 2
    for p in test:
        d = read_shard(p)
        assert d["masks"].shape == (0, 256, 256) and d["boxes"].shape == (0, 4)
        assert int(d["source_id"]) == next(t.coco_id for t in ds.test if t.image_id == d["image_id"])


def test_mask_pngs_hold_zero_one(built):
    import tensorflow as tf

    p = select_shards(built)[0]
    rec = next(iter(tf.data.TFRecordDataset(str(p)))).numpy()
    f = tf.train.Example.FromString(rec).features.feature
    m = tf.io.decode_png(f["image/object/mask"].bytes_list.value[0]).numpy()
    assert set(np.unique(m)) == {0, 1}
    assert f["image/format"].bytes_list.value[0] == b"png"


def test_verify_passes_and_catches_a_changed_source_mask(built, demo, tmp_path):
    assert verify_shards(built, demo, progress=False) == {"shards": 8, "masks": sum(
        it.n_nuclei for it in open_dataset(demo).train)}
    src = shutil.copytree(demo, tmp_path / "data")
    it = open_dataset(src).train[1]
    a = np.asarray(Image.open(it.mask_paths[4])).copy()
    ys, xs = np.nonzero(a == 0)
    a[ys[0], xs[0]] = 255
    Image.fromarray(a).save(it.mask_paths[4])
    with pytest.raises(ShardError, match=rf"mask 4 differs from .*{it.mask_paths[4].name}"):
        verify_shards(built, src, progress=False)


def test_rerun_skips_valid_shards(shards, demo, rows):
    stamp = {p.name: p.stat().st_mtime_ns for p in shards.iterdir() if p.name != INDEX_NAME}
    idx = write_shards(demo, rows, shards, progress=False, verbose=False)
    rep = idx["report"]
    assert rep.written == [] and len(rep.skipped) == 8
    assert {p.name: p.stat().st_mtime_ns for p in shards.iterdir() if p.name != INDEX_NAME} == stamp


def test_partial_and_mismatched_and_unindexed_shards_are_rewritten(shards, demo, rows):
    names = [e["file"] for e in load_index(shards)["shards"]]
    # 1. temp file of an interrupted atomic write
    (shards / f".{names[0]}.abc123.partial").write_bytes(b"half a shard")
    # 2. a shard whose bytes no longer match the index (torn copy)
    torn = shards / names[1]
    torn.write_bytes(torn.read_bytes()[:1000])
    with pytest.raises(ShardError, match=rf"{names[1]} is 1000 bytes, index.json says .*Run notebook 01 again"):
        select_shards(shards, image_ids=[load_index(shards)["shards"][1]["image_id"]], splits=None)
    with pytest.raises(ShardError, match="interrupted run"):
        read_shard(shards / f".{names[0]}.abc123.partial")
    rep = write_shards(demo, rows, shards, progress=False, verbose=False)["report"]
    assert rep.partial_removed == [f".{names[0]}.abc123.partial"]
    assert rep.mismatched == [names[1]] and rep.written == [names[1]] and len(rep.skipped) == 7
    assert not any(p.name.endswith(".partial") for p in shards.iterdir())
    verify_shards(shards, demo, progress=False)
    # 3. shards written but the index never was (run killed before the end)
    (shards / INDEX_NAME).unlink()
    rep = write_shards(demo, rows, shards, progress=False, verbose=False)["report"]
    assert sorted(rep.unindexed) == sorted(names) and len(rep.written) == 8
    verify_shards(shards, demo, progress=False)


def test_select_shards_by_split_organ_and_ids(built, rows):
    by_id = {r["image_id"]: r for r in rows}
    train = select_shards(built)
    assert sorted(p.name for p in train) == sorted(by_id[i]["shard"] for i in split_ids(rows, "train"))
    both = select_shards(built, splits=("train", "val"))
    assert len(both) == len(split_ids(rows, "train", "val")) == 6
    prostate = select_shards(built, organs=["prostate"], splits=("train", "val"))
    assert prostate and all("-prostate-" in p.name for p in prostate)
    pick = split_ids(rows, "train")[:2]
    assert sorted(p.name for p in select_shards(built, image_ids=pick)) == sorted(by_id[i]["shard"] for i in pick)
    with pytest.raises(ShardError, match="organ.*'liver'.*known"):
        select_shards(built, organs=["liver"])
    with pytest.raises(ShardError, match="not in"):
        select_shards(built, image_ids=["TCGA-NOPE"])
    with pytest.raises(ShardError, match="index.json not found"):
        select_shards(built.parent)


def test_changing_the_val_split_rewrites_only_the_index(shards, demo, rows):
    new = set_val_split(rows, choose_val_split(rows, seed=5))
    assert split_ids(new, "val") != split_ids(rows, "val")
    rep = write_shards(demo, new, shards, progress=False, verbose=False)["report"]
    assert rep.written == [] and len(rep.skipped) == 8
    assert sorted(e["image_id"] for e in load_index(shards)["shards"] if e["split"] == "val") == \
        sorted(split_ids(new, "val"))


@pytest.fixture(scope="module")
def real_shards(real_data, tmp_path_factory):
    d = tmp_path_factory.mktemp("real_shards")
    t0 = time.time()
    idx = write_shards(real_data, read_manifest(REPO_MANIFEST), d, verbose=False)
    print(f"\nreal shards: write_shards {time.time() - t0:.0f}s")
    return d, idx


@pytest.mark.realdata
def test_real_shards_hold_every_mask_bit_exactly(real_data, real_shards):
    """write_shards decodes all 14,598 source PNGs (checking them), builds each image's
    instance map from them, decodes the map back from the shard bytes and compares
    (every mask, bit for bit), and reads every shard back from disk. The per-instance
    PNGs (Model Garden's input) are re-checked from disk against the source PNGs on
    the two smallest shards here, and on all shards in the slow test below."""
    d, idx = real_shards
    assert len(idx["report"].written) == 30 and idx["n_nuclei"] == 14598
    assert all(e["instance_map"] for e in idx["shards"] if e["n_nuclei"])
    assert len(select_shards(d, splits=("train", "val"))) == 24
    smallest = sorted((e for e in idx["shards"] if e["n_nuclei"]), key=lambda e: e["n_nuclei"])[:2]
    t0 = time.time()
    got = verify_shards(d, real_data, image_ids=[e["image_id"] for e in smallest])
    assert got == {"shards": 2, "masks": sum(e["n_nuclei"] for e in smallest)}
    print(f"verify_shards (2 shards, {got['masks']} masks): {time.time() - t0:.0f}s")
    it = open_dataset(real_data).item(smallest[0]["image_id"])
    fast = read_shard(d / smallest[0]["file"], fast=True)
    assert np.array_equal(fast["masks"], read_masks(it))


@pytest.mark.realdata
@pytest.mark.slow
def test_real_shards_every_instance_png_from_disk(real_data, real_shards):
    d, _ = real_shards
    assert verify_shards(d, real_data) == {"shards": 30, "masks": 14598}


def test_write_with_inline_verify(demo, rows, tmp_path):
    idx = write_shards(demo, rows, tmp_path, progress=False, verbose=False, verify=True)
    assert len(idx["report"].written) == 8
    assert verify_shards(tmp_path, demo, progress=False, image_ids=[rows[0]["image_id"]])["shards"] == 1


def test_model_garden_maskrcnn_parser_reads_a_demo_shard(built):
    """Model Garden's own Mask R-CNN input pipeline (decoder + training parser) accepts a shard."""
    import tensorflow as tf
    from official.vision.dataloaders.maskrcnn_input import Parser
    from official.vision.dataloaders.tf_example_decoder import TfExampleDecoder

    p = select_shards(built)[0]
    e = next(x for x in load_index(built)["shards"] if x["file"] == p.name)
    parser = Parser(output_size=[256, 256], min_level=2, max_level=6, num_scales=1, aspect_ratios=[1.0],
                    anchor_size=3, include_mask=True, mask_crop_size=28, max_num_instances=128)
    rec = next(iter(tf.data.TFRecordDataset(str(p))))
    image, labels = parser.parse_fn(is_training=True)(TfExampleDecoder(include_mask=True).decode(rec))
    assert image.shape == (256, 256, 3)
    n = int(tf.reduce_sum(tf.cast(labels["gt_classes"] > 0, tf.int32)))
    assert n == e["n_nuclei"]
    assert labels["gt_masks"].shape == (128, 28, 28)
