import json

import pytest

from helpers.data import manifest as mf
from helpers.data import prepare, shards
from helpers.data.dataset import DatasetError


def test_demo_dataset_prepared_and_split(workspace):
    root, manifest_path = prepare.get_dataset(workspace, "", "demo")
    rows = prepare.check_dataset(root, manifest_path)
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    rows = prepare.choose_split(workspace, rows, val_ids=[rows[0]["image_id"]])
    saved = mf.workspace_manifest(workspace)
    assert [r["image_id"] for r in saved if r["split"] == "val"] == [rows[0]["image_id"]]
    per = prepare.nuclei_per_organ(saved)
    assert sum(sum(v.values()) for v in per.values()) == sum(r["n_nuclei"] for r in saved)
    # n_val=0: everything labeled trains (the final model)
    rows = prepare.choose_split(workspace, rows, n_val=0)
    assert not mf.split_ids(mf.workspace_manifest(workspace), "val")


def test_real_profile_without_source_says_what_to_do(workspace):
    with pytest.raises(DatasetError, match="data_source is empty"):
        prepare.get_dataset(workspace, "", "colab")


def test_later_notebooks_need_notebook_01(workspace):
    with pytest.raises(DatasetError, match="run notebook 01"):
        mf.workspace_manifest(workspace)


def test_figures_show_every_nucleus(workspace):
    root, manifest_path = prepare.get_dataset(workspace, "", "demo")
    rows = mf.read_manifest(manifest_path)
    fig = prepare.samples_figure(root, n=2)
    assert len(fig.axes) == 4
    titles = [ax.get_title() for ax in fig.axes]
    first = next(r for r in rows if r["image_id"] == titles[0])
    assert titles[1] == f"{first['n_nuclei']} nuclei"
    fig = prepare.organ_figure(rows)
    assert fig.axes[0].get_title() == "Nuclei per organ"
    assert prepare.organ_figure([{**r, "organ": "siteA"} for r in rows]).axes[0].get_title().startswith(
        "Nuclei per group")
    heights = sum(p.get_height() for p in fig.axes[0].patches)
    assert heights == sum(r["n_nuclei"] for r in rows if r["split"] != "test")


def test_notebook_01_runs_headless_and_writes_valid_shards(tmp_path):
    from helpers.notebooks import run_notebook, NOTEBOOK_DIR

    ws_root = tmp_path / "ws"
    out = run_notebook(NOTEBOOK_DIR / "01_prepare_shards.ipynb", {"profile": "demo"}, ws_root)
    nb = json.loads(out.read_text())
    images = [o for c in nb["cells"] for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 2  # the samples and the organ chart are shown
    index = shards.load_index(ws_root / "shards")
    assert index["n_shards"] == 8
    shards.verify_shards(ws_root / "shards", ws_root / "data" / "demo", progress=False)
    # re-running skips the valid shards and rewrites nothing
    mtimes = {p.name: p.stat().st_mtime_ns for p in (ws_root / "shards").glob("*.tfrecord")}
    run_notebook(NOTEBOOK_DIR / "01_prepare_shards.ipynb", {"profile": "demo"}, ws_root)
    assert mtimes == {p.name: p.stat().st_mtime_ns for p in (ws_root / "shards").glob("*.tfrecord")}
    text = "".join("".join(o.get("text", "")) for c in json.loads(out.read_text())["cells"]
                   for o in c.get("outputs", []))
    assert "0 written, 8 skipped" in text


@pytest.mark.parametrize("layout, source", [("labels", "TIFF resolution tags"), ("coco", "COCO image entry"),
                                            ("geojson", "GeoJSON properties")])
def test_notebook_01_imports_each_layout_with_its_pixel_size(tmp_path, layout, source):
    """A user's annotations in each layout go through notebook 01 without code: detected,
    imported, split by their own manifest and sharded, their pixel size recorded for training."""
    from helpers.data.coco_annotations import export_coco
    from helpers.data.demo_data import make_demo_dataset
    from helpers.data.label_images import export_label_pairs
    from helpers.data.qupath_annotations import export_geojson
    from helpers.notebooks import NOTEBOOK_DIR, run_notebook

    demo = make_demo_dataset(tmp_path / "demo", n_train=4, n_test=0)
    export = {"labels": export_label_pairs, "coco": export_coco, "geojson": export_geojson}[layout]
    mine = export(demo, tmp_path / "my annotations", pixel_size_um=0.5)
    ws_root = tmp_path / "ws"
    run_notebook(NOTEBOOK_DIR / "01_prepare_shards.ipynb", {"profile": "demo", "data_source": str(mine)}, ws_root)
    index = shards.load_index(ws_root / "shards")
    assert index["n_shards"] == 4 and index["pixel_size_um"] == 0.5 and source in index["pixel_size_from"]
    rows = mf.read_manifest(ws_root / "data" / mf.WORKSPACE_MANIFEST)
    original = mf.read_manifest(demo / mf.MANIFEST_NAME)
    assert sorted((r["image_id"], r["n_nuclei"]) for r in rows) == sorted(
        (r["image_id"], r["n_nuclei"]) for r in original if r["split"] != "test")
    assert sum(r["split"] == "val" for r in rows) == 1
