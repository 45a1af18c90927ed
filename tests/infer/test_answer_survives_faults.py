"""Faults on the way to the answer: a model that found nothing, test files with unusual names or
without sizes, and a kill while answer.json and answer.zip are written. Each test recreates the
fault through the real entry point and checks what the user sees and what is on disk."""
import json
import subprocess
import sys

import numpy as np
import pytest

from helpers.detections import Detections
from helpers.infer.submission import (PENDING, SubmissionNote, build_answer, check_answer, load_test_images,
                                      read_answer, validate_answer, write_answer)
from _answers import SIZE, A, B, boxes_dets, preds

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


def nothing(size=SIZE):
    return Detections.from_masks(np.zeros((0,) + size, bool), np.zeros(0))


def test_an_image_where_the_model_found_nothing_is_left_out_with_a_note(test_ids, tmp_path):
    with pytest.warns(SubmissionNote, match=rf"found no nucleus in 1 of the 2 test image\(s\) \({B}.png\).*"
                                             "score 0.*train longer"):
        entries = build_answer({A: preds()[A], B: nothing()}, test_ids)
    assert [e["image_id"] for e in entries] == [3, 3]
    files = write_answer(entries, tmp_path, test_ids)
    assert files.summary["images"] == {f"{B}.png": 0, f"{A}.png": 2}
    assert read_answer(files.zip_path) == entries


def test_a_model_that_found_nothing_anywhere_still_gives_a_loadable_answer(test_ids, tmp_path):
    with pytest.warns(SubmissionNote, match=r"found no nucleus in any test image.*placeholder entry"):
        entries = build_answer({A: nothing(), B: nothing()}, test_ids)
    assert len(entries) == 1 and entries[0]["score"] == 0.0 and entries[0]["bbox"] == [0.0, 0.0, 1.0, 1.0]
    files = write_answer(entries, tmp_path, test_ids)
    from pycocotools.coco import COCO

    gt = COCO()
    gt.dataset = {"images": [{"id": i, "height": SIZE[0], "width": SIZE[1]} for i in (3, 7)],
                  "categories": [{"id": 1, "name": "nucleus"}], "annotations": []}
    gt.createIndex()
    assert len(gt.loadRes(str(files.json_path)).getAnnIds()) == 1


def test_the_same_answer_again_is_not_an_error(test_ids, tmp_path):
    entries = build_answer(preds(), test_ids)
    first = write_answer(entries, tmp_path, test_ids)
    mtime = first.zip_path.stat().st_mtime_ns
    again = write_answer(entries, tmp_path, test_ids)
    assert again.zip_path.stat().st_mtime_ns == mtime and read_answer(again.zip_path) == entries


KILLED_WRITE = """
import json, os, sys
sys.path.insert(0, {repo!r})
from helpers.infer import submission
entries, out, kill_at = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
calls = []
real_replace = os.replace
def replace(src, dst):
    calls.append(dst)
    if len(calls) == kill_at:
        os._exit(9)  # the runtime vanishes here
    real_replace(src, dst)
os.replace = replace
submission.write_answer(entries, out, overwrite=True)
"""


def _killed_write(entries, out, kill_at):
    """Run write_answer in a child process that dies at its ``kill_at``-th rename."""
    code = KILLED_WRITE.format(repo=str(REPO))
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(entries), str(out), str(kill_at)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 9, proc.stderr


def test_a_kill_between_the_two_files_is_finished_by_the_next_run(test_ids, tmp_path):
    old = build_answer(preds(), test_ids)
    write_answer(old, tmp_path, test_ids)
    new = old[:2]
    # the renames: pending/ready (atomic), then answer.json, then answer.zip: die before the zip
    _killed_write(new, tmp_path, kill_at=3)
    assert read_answer(tmp_path / "answer.json") == new and read_answer(tmp_path / "answer.zip") == old
    assert (tmp_path / PENDING / "ready").is_file()  # the rest of the job, recorded
    files = write_answer(new, tmp_path, test_ids)  # the re-run, without overwrite
    assert read_answer(files.json_path) == read_answer(files.zip_path) == new
    assert sorted(p.name for p in tmp_path.iterdir()) == ["answer.json", "answer.zip", "test_img_ids.json"]


def test_a_first_write_killed_before_it_was_complete_leaves_nothing_and_reruns(test_ids, tmp_path):
    entries = build_answer(preds(), test_ids)
    out = tmp_path / "sub"
    _killed_write(entries, out, kill_at=1)  # before the pair was marked ready
    assert not (out / "answer.json").exists() and not (out / "answer.zip").exists()
    files = write_answer(entries, out, test_ids)  # no "already exists", no overwrite needed
    assert read_answer(files.zip_path) == entries
    assert sorted(p.name for p in out.iterdir()) == ["answer.json", "answer.zip"]


def _outputs(nb_path) -> str:
    nb = json.loads(nb_path.read_text())
    return "\n".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))


def test_notebooks_04_and_05_with_a_model_that_finds_nothing_warn_and_still_submit(heads, base):
    """The demo heads stage (10 steps), asked for nuclei it is never this sure of: notebook 04 says
    the model found nothing and what to do, notebook 05 writes a valid answer.zip and says why it
    holds a placeholder."""
    from _training_support import new_workspace
    from helpers.notebooks import NOTEBOOK_DIR, run_notebook

    ws_heads, _ = heads
    ws = new_workspace(base, "found-nothing", copy_from=ws_heads.root)
    params = {"profile": "demo", "models": ["heads"], "tta": [], "score_threshold": 0.9999}
    nb04 = run_notebook(NOTEBOOK_DIR / "04_ensemble.ipynb", params, ws.root)
    assert "model 'heads' (stage 'heads') found no nucleus in any of the" in _outputs(nb04)
    assert "train stage 'heads' for more steps" in _outputs(nb04)
    assert "scores AP50@100 0 on validation" in _outputs(nb04)
    nb05 = run_notebook(NOTEBOOK_DIR / "05_submit.ipynb", {"profile": "demo", "tta": [],
                                                             "score_threshold": 0.9999}, ws.root)
    assert "found no nucleus in any test image" in _outputs(nb05)
    answer = read_answer(ws.submission / "answer.zip")
    assert len(answer) == 1 and answer[0]["score"] == 0.0
    images = load_test_images(json.loads((ws.shards / "index.json").read_text())["dataset_root"])
    validate_answer(answer, images)


def _dataset_with(tmp_path, base, rename=None, drop_sizes=False):
    """A copy of the demo dataset with its test images renamed ({old stem: new stem}) and/or
    without height/width in test_img_ids.json, its manifest rebuilt, its shards written."""
    import shutil

    from _training_support import demo_dataset
    from helpers.data.manifest import build_manifest, read_manifest, split_ids
    from helpers.data.shards import write_shards
    from helpers.workspace import get_workspace

    root = tmp_path / "data"
    shutil.copytree(demo_dataset(base), root)
    spec = json.loads((root / "test_img_ids.json").read_text())
    for e in spec["images"]:
        stem = e["file_name"][:-len(".png")]
        if rename and stem in rename:
            (root / "test" / e["file_name"]).rename(root / "test" / f"{rename[stem]}.png")
            e["file_name"] = f"{rename[stem]}.png"
        if drop_sizes:
            del e["height"], e["width"]
    (root / "test_img_ids.json").write_text(json.dumps(spec))
    val = split_ids(read_manifest(root / "data_manifest.csv"), "val")
    rows = build_manifest(root, val_ids=val, progress=False)
    ws = get_workspace(tmp_path / "ws")
    write_shards(root, rows, ws.shards, progress=False, verbose=False)
    return root, spec, ws


def test_test_ids_without_sizes_take_the_sizes_from_the_images(tmp_path, base):
    from helpers.infer.selection import test_images

    _, spec, ws = _dataset_with(tmp_path, base, drop_sizes=True)
    got = {(t.file_name, t.coco_id, t.height, t.width) for t in test_images(ws)}
    assert got == {(e["file_name"], e["id"], 256, 256) for e in spec["images"]}


def test_test_images_named_with_a_space_or_a_dot_are_predicted_and_submitted(heads, base, tmp_path):
    import shutil

    from helpers.infer.predict import image_ids_of, predict_stage
    from helpers.infer.prediction_cache import PredictionCache
    from helpers.infer.selection import test_images

    old = sorted(json.loads((base / "demo_data" / "test_img_ids.json").read_text())["images"],
                 key=lambda e: e["file_name"])
    stems = [e["file_name"][:-len(".png")] for e in old]
    rename = {stems[0]: f"{stems[0]} v2", stems[1]: f"{stems[1]}.v2"}
    _, _, ws = _dataset_with(tmp_path, base, rename=rename)
    shutil.copytree(heads[0].checkpoints / "heads", ws.checkpoints / "heads")
    ids = image_ids_of(ws, "test")
    assert sorted(ids) == sorted(rename.values())
    preds = predict_stage(ws, "heads", ids, tta=("hflip",), score_threshold=0.0, progress=False)
    assert set(preds) == set(ids)
    keys = set(PredictionCache(ws.predictions).keys("heads"))
    assert {(k.image_id, k.tta) for k in keys} == {(i, t) for i in ids for t in (None, "hflip")}
    images = test_images(ws)
    files = write_answer(build_answer(preds, images), ws.submission, images)
    assert set(files.summary["images"]) == {f"{s}.png" for s in rename.values()}


def test_notebook_04_refuses_to_score_a_model_on_images_it_trained_on(base, heads):
    from _training_support import demo_dataset, new_workspace
    from helpers.data.manifest import read_manifest, set_val_split
    from helpers.data.shards import write_shards
    from helpers.infer import selection
    from helpers.infer.predict import image_ids_of

    ws = new_workspace(base, "val_changed", copy_from=heads[0].root)
    root = demo_dataset(base)
    rows = read_manifest(root / "data_manifest.csv")
    seen = sorted(r["image_id"] for r in rows if r["split"] == "train")[0]
    write_shards(root, set_val_split(rows, [seen]), ws.shards, progress=False, verbose=False)
    assert image_ids_of(ws, "val") == [seen]  # notebook 01 run again with val_ids = [seen]
    with pytest.raises(ValueError, match=rf"model 'heads' \(stage 'heads'\) was trained on 1 of today's "
                                         rf"validation images \({seen}\).*val_ids"):
        selection.model_predictions(ws, ["heads"], [seen], progress=False)
    record = ws.checkpoints / "heads" / "stage.json"  # a record older than train_image_ids: its files
    info = json.loads(record.read_text())
    del info["train_image_ids"]
    record.write_text(json.dumps(info))
    with pytest.raises(ValueError, match=rf"trained on 1 of today's validation images \({seen}\)"):
        selection.model_predictions(ws, ["heads"], [seen], progress=False)
    assert not ws.predictions.exists() or not any(ws.predictions.iterdir())


@pytest.mark.parametrize("damage", ["truncated", "flipped", "deleted"])
def test_a_damaged_shard_is_named_before_notebook_04_reads_it(base, damage, tmp_path):
    from _training_support import demo_dataset, new_workspace
    from helpers.data.manifest import read_manifest
    from helpers.data.shards import ShardError, write_shards
    from helpers.infer.predict import image_ids_of, shard_ground_truth

    ws = new_workspace(base, f"damaged_{damage}")
    val = image_ids_of(ws, "val")
    index = json.loads((ws.shards / "index.json").read_text())
    name = next(e["file"] for e in index["shards"] if e["image_id"] == val[0])
    shard = ws.shards / name
    data = shard.read_bytes()
    if damage == "truncated":
        shard.write_bytes(data[: len(data) // 2])
    elif damage == "flipped":
        shard.write_bytes(data[:500] + bytes(b ^ 0xFF for b in data[500:504]) + data[504:])
    else:
        shard.unlink()
    with pytest.raises(ShardError, match=rf"{name} (is missing|is \d+ bytes|is damaged).*Run notebook 01 again"):
        shard_ground_truth(ws, val)  # notebook 04's first cell
    write_shards(demo_dataset(base), read_manifest(demo_dataset(base) / "data_manifest.csv"), ws.shards,
                 progress=False, verbose=False)  # what notebook 01 does on its re-run
    assert shard.read_bytes() == data and set(shard_ground_truth(ws, val)) == set(val)


def test_a_full_disk_while_the_answer_is_written_names_the_folder_and_keeps_the_old_answer(test_ids, small_disk):
    from helpers.atomic import FolderNotWritable

    out = small_disk / "submission"
    old = build_answer(preds(), test_ids)
    write_answer(old, out, test_ids)
    small_disk.fill()
    new = old + [dict(old[0], score=0.1)] * 200  # bigger than what is left
    with pytest.raises(FolderNotWritable, match=rf"{out} is full"):
        write_answer(new, out, test_ids, overwrite=True)
    assert read_answer(out / "answer.json") == read_answer(out / "answer.zip") == old
    assert sorted(p.name for p in out.iterdir()) == ["answer.json", "answer.zip"]


def test_numpy_scores_and_ids_are_accepted(test_ids, tmp_path):
    entries = build_answer(preds(), test_ids)
    for e in entries:
        e["score"] = np.float32(e["score"])
        e["image_id"] = np.int64(e["image_id"])
    assert check_answer(entries, test_ids) == []
    files = write_answer(entries, tmp_path / "sub", test_ids)
    got = read_answer(files.zip_path)
    assert [type(e["score"]) for e in got] == [float] * 3 and [e["image_id"] for e in got] == [7, 3, 3]  # test_img_ids.json order


def test_nan_scores_are_counted_not_dropped_silently(test_ids):
    p = preds()
    p[A] = boxes_dets([(2, 2, 10, 12), (20, 30, 30, 40), (30, 2, 40, 12)], [0.9, float("nan"), float("nan")])
    with pytest.warns(SubmissionNote, match=rf"2 of the 3 detections of {A}.png have a NaN score"):
        entries = build_answer(p, test_ids)
    assert [e["image_id"] for e in entries] == [7, 3] and check_answer(entries, test_ids) == []
