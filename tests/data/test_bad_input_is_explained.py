"""Bad input is explained and nothing valid is lost: faults a Colab user meets in notebook 01 and in the submission.

Each test recreates the fault through the real entry point (``prepare.get_dataset``,
``acquire_dataset``, ``write_shards``, ``build_manifest``, ``build_answer`` / ``write_answer``),
asserts what the user is told (their own file, and the way out), and that valid data was
neither lost nor half-written. The numbers are the issue's.
"""
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.detections import Detections
from helpers.data import prepare
from helpers.data.acquire import RECORD_NAME, is_drive_source
from helpers.data.dataset import DatasetError, DatasetNote, open_dataset
from helpers.data.demo_data import make_demo_dataset
from helpers.data.manifest import MANIFEST_NAME, WORKSPACE_MANIFEST, build_manifest, read_manifest, write_manifest
from helpers.data.shards import INDEX_NAME, ShardError, load_index, read_shard, select_shards, verify_shards, write_shards
from helpers.infer.submission import build_answer, load_test_images, write_answer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo_src(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "data", seed=0)


@pytest.fixture()
def src(demo_src, tmp_path):
    """The user's own dataset folder (a private copy each test may break)."""
    return Path(shutil.copytree(demo_src, tmp_path / "my_dataset"))


def manifest_of(src):
    return str(src / MANIFEST_NAME)


def get(ws, source, manifest):
    """Notebook 01's first cell with a real-data profile: acquire ``source`` into the workspace."""
    return prepare.get_dataset(ws, str(source), "cpu", str(manifest))


def partials(folder):
    return sorted(p.name for p in Path(folder).iterdir() if p.name.endswith(".partial")) \
        if Path(folder).is_dir() else []


def files(root):
    """{relative path: bytes} of a folder (without the acquisition record)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in Path(root).rglob("*")
            if p.is_file() and p.name != RECORD_NAME}


def zip_folder(folder, zip_path, prefix=""):
    tmp = zip_path.with_name(zip_path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(Path(folder).rglob("*")):
            if p.is_file():
                zf.write(p, prefix + str(p.relative_to(folder)))
    os.replace(tmp, zip_path)
    return zip_path


def save_png(path, arr):
    Image.fromarray(arr).save(path)


def break_mask(path):
    """A grey pixel: the mask is no longer binary (write_shards refuses it)."""
    a = np.asarray(Image.open(path)).copy()
    ys, xs = np.nonzero(a)
    a[ys[0], xs[0]] = 128
    save_png(path, a)


def fix_mask(path):
    a = np.asarray(Image.open(path))
    save_png(path, ((a > 0) * 255).astype(np.uint8))


def train_item(root, k):
    return open_dataset(root).train[k]


def in_ws(ws, item, src):
    """The workspace copy of a file of the user's source."""
    return ws.data / prepare.REAL_FOLDER / Path(item).relative_to(src)


# --------------------------------------------------------------------------- 2. a fixed source replaces the copy
@pytest.mark.parametrize("kind", ["folder", "zip"])
def test_02_fixed_source_replaces_the_workspace_copy(kind, src, workspace, tmp_path, capsys):
    mask = train_item(src, 2).mask_paths[3]
    break_mask(mask)
    source = src if kind == "folder" else zip_folder(src, tmp_path / "hw3.zip", "hw3/")
    root, manifest = get(workspace, source, manifest_of(src))
    rows = prepare.choose_split(workspace, prepare.check_dataset(root, manifest), seed=0)
    with pytest.raises(DatasetError, match=rf"{mask.name} is not binary.*threshold"):
        write_shards(root, rows, workspace.shards, progress=False, verbose=False)
    kept = {e["file"]: (workspace.shards / e["file"]).stat().st_mtime_ns
            for e in json.loads((workspace.shards / INDEX_NAME).read_text())["shards"]}
    assert kept  # the shards before the bad mask are finished and recorded

    # the user fixes the mask in their source (folder, or the zip made again) and runs notebook 01 again
    fix_mask(mask)
    if kind == "zip":
        zip_folder(src, source, "hw3/")
    capsys.readouterr()
    root, manifest = get(workspace, source, manifest_of(src))
    assert "replaced (the source changed" in capsys.readouterr().out
    assert in_ws(workspace, mask, src).read_bytes() == mask.read_bytes()
    assert files(root) == files(src)
    rep = write_shards(root, rows, workspace.shards, progress=False, verbose=False)["report"]
    assert sorted(rep.skipped) == sorted(kept)  # finished shards survive the replaced copy
    assert {f: (workspace.shards / f).stat().st_mtime_ns for f in kept} == kept
    verify_shards(workspace.shards, root, progress=False)
    assert partials(workspace.data) == []

    # unchanged source: nothing is copied again
    stamp = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    get(workspace, source, manifest_of(src))
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == stamp


def test_02_changed_source_that_fails_its_checks_keeps_the_old_copy(src, workspace):
    root, _ = get(workspace, src, manifest_of(src))
    before = files(root)
    image = train_item(src, 1).image_path
    a = np.asarray(Image.open(image)).copy()
    a[0, 0] ^= 1
    save_png(image, a)  # the image no longer matches the manifest's sha256
    with pytest.raises(DatasetError) as err:
        get(workspace, src, manifest_of(src))
    msg = str(err.value)
    assert f"{image}: sha256" in msg and "re-acquire" in msg and "is kept as it is" in msg
    assert ".partial" not in msg
    assert files(root) == before and partials(workspace.data) == []


# --------------------------------------------------------------------------- 3. interrupted shard writes
def test_03_a_failure_half_way_keeps_every_finished_shard(src, workspace):
    root, manifest = get(workspace, src, manifest_of(src))
    rows = prepare.choose_split(workspace, prepare.check_dataset(root, manifest), seed=0)
    order = sorted(rows, key=lambda r: r["shard"])
    bad = order[3]  # the 4th shard written
    assert bad["split"] != "test"
    mask = open_dataset(root).item(bad["image_id"]).mask_paths[0]
    break_mask(mask)
    with pytest.raises(DatasetError, match=rf"(?s){mask.name} is not binary.*3 finished shard\(s\) of 8 are kept"):
        write_shards(root, rows, workspace.shards, progress=False, verbose=False)
    raw = json.loads((workspace.shards / INDEX_NAME).read_text())
    assert raw["complete"] is False and [e["file"] for e in raw["shards"]] == [r["shard"] for r in order[:3]]
    with pytest.raises(ShardError, match=r"interrupted write_shards run \(3 of 8.*run notebook 01.*again"):
        select_shards(workspace.shards)  # notebook 02 refuses a half-written set
    stamp = {e["file"]: (workspace.shards / e["file"]).stat().st_mtime_ns for e in raw["shards"]}

    fix_mask(mask)
    idx = write_shards(root, rows, workspace.shards, progress=False, verbose=False)
    rep = idx["report"]
    assert rep.skipped == [r["shard"] for r in order[:3]] and rep.written == [r["shard"] for r in order[3:]]
    assert {f: (workspace.shards / f).stat().st_mtime_ns for f in stamp} == stamp
    assert load_index(workspace.shards)["complete"] is True and idx["n_shards"] == 8
    verify_shards(workspace.shards, root, progress=False)


_WRITER = """
import sys
from helpers.data.manifest import read_manifest
from helpers.data.shards import write_shards
write_shards(sys.argv[1], read_manifest(sys.argv[2]), sys.argv[3], progress=False, verbose=False)
"""


def test_03_sigkill_during_write_shards_redoes_only_the_unfinished_shards(tmp_path):
    data = make_demo_dataset(tmp_path / "data", seed=3, n_train=10, n_test=2, size=512)
    out = tmp_path / "shards"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(data), str(data / MANIFEST_NAME), str(out)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    index = out / INDEX_NAME
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if index.is_file():
                idx = json.loads(index.read_text())  # atomic writes: never torn
                if len(idx["shards"]) >= 3:
                    proc.send_signal(signal.SIGKILL)
                    break
            time.sleep(0.01)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    at_kill = json.loads(index.read_text())
    assert at_kill["complete"] is False and at_kill["n_wanted"] == 12
    finished = [e["file"] for e in at_kill["shards"]]
    assert 3 <= len(finished) < 12
    stamp = {f: (out / f).stat().st_mtime_ns for f in finished}
    with pytest.raises(ShardError, match="interrupted write_shards run"):
        load_index(out)

    rep = write_shards(data, read_manifest(data / MANIFEST_NAME), out, progress=False, verbose=False)["report"]
    assert rep.skipped == finished and len(rep.written) == 12 - len(finished)
    assert set(rep.written).isdisjoint(finished)
    assert {f: (out / f).stat().st_mtime_ns for f in finished} == stamp
    assert not [p for p in out.iterdir() if p.name.endswith(".partial")]
    verify_shards(out, data, progress=False)


# --------------------------------------------------------------------------- 4. test_img_ids.json sizes in notebook 01
def test_04_wrong_test_size_in_the_json_is_caught_in_notebook_01(src, workspace):
    f = src / "test_img_ids.json"
    spec = json.loads(f.read_text())
    name = spec["images"][1]["file_name"]
    spec["images"][1]["width"] = 1000
    f.write_text(json.dumps(spec))
    with pytest.raises(DatasetError) as err:
        get(workspace, src, manifest_of(src))
    msg = str(err.value)
    assert f"{f} says {name} is 1000x256" in msg and f"{src / 'test' / name} is 256x256" in msg
    assert '"width": 256' in msg and "run notebook 01 again" in msg and ".partial" not in msg
    assert not (workspace.data / prepare.REAL_FOLDER).exists() and partials(workspace.data) == []


# --------------------------------------------------------------------------- 5. errors name the user's source
def test_05_errors_name_the_source_folder_not_a_temp_folder(src, workspace):
    victim = train_item(src, 0).image_path.parents[1]
    shutil.rmtree(victim / "masks")
    with pytest.raises(DatasetError) as err:
        get(workspace, src, manifest_of(src))
    msg = str(err.value)
    assert f"{victim / 'masks'} is missing" in msg and f"remove the incomplete folder {victim}" in msg
    assert ".partial" not in msg and f"fix it in your source, {src}" in msg
    assert not (workspace.data / prepare.REAL_FOLDER).exists() and partials(workspace.data) == []


def test_05_errors_inside_a_zip_name_the_zip_and_the_member(src, workspace, tmp_path):
    it = train_item(src, 1)
    a = np.asarray(Image.open(it.image_path)).copy()
    a[5, 5] ^= 1
    save_png(it.image_path, a)  # differs from the manifest
    z = zip_folder(src, tmp_path / "hw3.zip", "hw3/")
    with pytest.raises(DatasetError) as err:
        get(workspace, z, manifest_of(src))
    msg = str(err.value)
    member = f"hw3/train/{it.image_id}/images/{it.image_id}.png"
    assert f"{z}:{member}: sha256" in msg and ".partial" not in msg and f"fix it in your source, {z}" in msg
    assert partials(workspace.data) == []


# --------------------------------------------------------------------------- 6. what is taken for a Drive id
def test_06_a_missing_name_that_is_no_drive_id_is_not_found(workspace):
    assert not is_drive_source("hw3-data-release-2024")
    with pytest.raises(DatasetError) as err:
        get(workspace, "hw3-data-release-2024", REPO / MANIFEST_NAME)
    msg = str(err.value)
    assert "source hw3-data-release-2024 (looked in" in msg and "not found" in msg
    assert "not a Google Drive file id either" in msg and "download" not in msg.split("either")[0]


def test_06_an_ambiguous_name_gets_both_explanations(workspace, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    name = "MyNuclei_Release2024_final_v2"  # could be an id: Drive is tried, and the message says both
    assert is_drive_source(name)
    with pytest.raises(DatasetError) as err:
        get(workspace, name, REPO / MANIFEST_NAME)
    msg = str(err.value)
    assert "could not download" in msg and "download the zip yourself and pass its local path" in msg
    assert f"no file or folder {name!r} in {tmp_path} either" in msg
    assert partials(workspace.data) == []


# --------------------------------------------------------------------------- 7. an empty zip
def test_07_an_empty_zip_says_so(workspace, tmp_path):
    z = tmp_path / "hw3.zip"
    with zipfile.ZipFile(z, "w"):
        pass
    with pytest.raises(DatasetError, match=rf"{z} is empty \(it holds no files\): zip the dataset \(the folder with train/"):
        get(workspace, z, REPO / MANIFEST_NAME)
    assert not (workspace.data / prepare.REAL_FOLDER).exists() and partials(workspace.data) == []


# --------------------------------------------------------------------------- 8. an all-zero mask
def test_08_an_empty_mask_is_skipped_and_never_counted(src, workspace, tmp_path):
    it = train_item(src, 0)
    empty = it.mask_paths[5]
    save_png(empty, np.zeros((256, 256), np.uint8))
    # the manifest of the original data counts that nucleus: the user is told the way out
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        root, manifest = get(workspace, src, manifest_of(src))
        rows = prepare.choose_split(workspace, prepare.check_dataset(root, manifest), seed=0)
        with pytest.raises(DatasetError) as err:
            write_shards(root, rows, workspace.shards, progress=False, verbose=False)
    notes = [str(w.message) for w in seen if issubclass(w.category, DatasetNote)]
    # once, naming the user's own folder: not the temp folder of the copy, nor the workspace copy
    assert notes == [f"skipping 1 empty mask(s) in {empty.parent} (no foreground pixel, no nucleus): "
                     f"['{empty.name}']; they are not counted as nuclei (delete them from your dataset "
                     "source to silence this)"]
    msg = str(err.value)
    assert f"holds {it.n_nuclei - 1} non-empty masks (1 empty one(s) skipped: ['{empty.name}'])" in msg
    assert f"the manifest says {it.n_nuclei}" in msg and "rebuild the manifest" in msg

    # following it: a manifest built from this data counts the non-empty masks, and everything agrees
    rows = build_manifest(src, progress=False)  # the same note: not shown again
    assert next(r for r in rows if r["image_id"] == it.image_id)["n_nuclei"] == it.n_nuclei - 1
    mine = write_manifest(rows, tmp_path / "my_manifest.csv")
    root, manifest = get(workspace, src, mine)
    rows = prepare.choose_split(workspace, prepare.check_dataset(root, manifest), seed=0)
    idx = write_shards(root, rows, workspace.shards, progress=False, verbose=False)
    assert idx["report"].notes and "skipping 1 empty mask" in idx["report"].notes[0]
    entry = next(e for e in idx["shards"] if e["image_id"] == it.image_id)
    assert entry["n_nuclei"] == it.n_nuclei - 1 == len(read_shard(workspace.shards / entry["file"])["masks"])
    assert idx["n_nuclei"] == sum(r["n_nuclei"] for r in rows)
    verify_shards(workspace.shards, root, progress=False)
    # deleting the empty file (the old advice) now also leads to a working dataset
    empty.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error", DatasetNote)
        get(workspace, src, mine)  # replaced (the source changed); counts still agree


def test_08_real_manifest_counts_are_unchanged():
    rows = read_manifest(REPO / MANIFEST_NAME)
    assert sum(r["n_nuclei"] for r in rows) == 14598


def test_08_a_duplicate_mask_file_is_named_not_counted_twice(src, workspace):
    """The same nucleus in two mask files: a manifest built from the data, the course's manifest
    and the shards all refuse it, naming both files."""
    import shutil

    it = train_item(src, 0)
    copy = it.mask_paths[3].with_name("mask_9999.png")
    shutil.copy2(it.mask_paths[3], copy)
    with pytest.raises(DatasetError, match=f"{copy} holds the same nucleus as {it.mask_paths[3].name}.*Delete one"):
        build_manifest(src, progress=False)
    with pytest.raises(DatasetError, match=f"mask_9999.png holds the same nucleus as {it.mask_paths[3].name}"):
        root, manifest = get(workspace, src, manifest_of(src))
        prepare.check_dataset(root, manifest)


def test_a_jpeg_named_png_is_refused_by_name(src, workspace):
    """JPEG data under a .png name once passed notebook 01 and failed the shards' verification."""
    it = train_item(src, 1)
    Image.open(it.image_path).convert("RGB").save(it.image_path, format="JPEG")
    with pytest.raises(DatasetError, match=f"{it.image_path} is named .png but holds JPEG data: save it as a real PNG"):
        build_manifest(src, progress=False)


# --------------------------------------------------------------------------- 10. an inverted mask
def test_10_an_inverted_mask_is_rejected_by_name(src, workspace):
    it = train_item(src, 4)
    mask = it.mask_paths[2]
    save_png(mask, (255 - np.asarray(Image.open(mask))).astype(np.uint8))
    root, manifest = get(workspace, src, manifest_of(src))
    rows = prepare.choose_split(workspace, prepare.check_dataset(root, manifest), seed=0)
    with pytest.raises(DatasetError) as err:
        write_shards(root, rows, workspace.shards, progress=False, verbose=False)
    msg = str(err.value)
    assert f"{in_ws(workspace, mask, src)} covers" in msg and "looks inverted" in msg
    assert "mask = 255 - mask" in msg
    bad_shard = next(r["shard"] for r in rows if r["image_id"] == it.image_id)
    recorded = [e["file"] for e in json.loads((workspace.shards / INDEX_NAME).read_text())["shards"]]
    assert bad_shard not in recorded and not (workspace.shards / bad_shard).exists()
    entries = json.loads((workspace.shards / INDEX_NAME).read_text())["shards"]
    assert entries
    for e in entries:  # every shard finished before it is whole
        assert len(read_shard(workspace.shards / e["file"], fast=True)["masks"]) == e["n_nuclei"]


# --------------------------------------------------------------------------- 11. submission odds
def test_11_test_img_ids_with_a_utf8_bom_is_accepted(test_ids, src, workspace):
    test_ids.write_bytes(b"\xef\xbb\xbf" + test_ids.read_bytes())
    assert sorted(t.coco_id for t in load_test_images(test_ids)) == [3, 7]  # test_ids: tests/conftest.py
    f = src / "test_img_ids.json"
    f.write_bytes(b"\xef\xbb\xbf" + f.read_bytes())  # the dataset's own copy, saved by a Windows editor
    root, manifest = get(workspace, src, manifest_of(src))
    assert len(open_dataset(root).test) == 2 and len(load_test_images(root)) == 2


# --------------------------------------------------------------------------- 14. stale temp folders
def test_14_temp_folders_of_a_killed_acquisition_are_removed(src, workspace, capsys):
    dest = workspace.data / prepare.REAL_FOLDER
    workspace.data.mkdir(parents=True, exist_ok=True)
    stale = [Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=workspace.data))
             for _ in range(2)]
    shutil.copytree(src / "train", stale[0] / "data" / "train")  # half a copy
    mine = workspace.data / "my.partial"  # not ours: left alone
    mine.mkdir()
    (workspace.data / f".{dest.name}.notes").write_text("user's")
    get(workspace, src, manifest_of(src))
    out = capsys.readouterr().out
    assert "removed 2 temp folder(s) left by an interrupted run" in out
    assert not any(p.exists() for p in stale) and mine.is_dir()
    assert (workspace.data / f".{dest.name}.notes").read_text() == "user's"
    assert files(dest) == files(src)


# --------------------------------------------------------------------------- 15. file modes
def test_15_workspace_data_files_are_readable_by_others(src, workspace, tmp_path):
    old = os.umask(0o022)
    try:
        root, manifest = get(workspace, src, manifest_of(src))
        rows = prepare.choose_split(workspace, prepare.check_dataset(root, manifest), seed=0)
        write_shards(root, rows, workspace.shards, progress=False, verbose=False)
        sub = write_answer(build_answer(preds_for(root), root), workspace.submission, root)
        demo = make_demo_dataset(tmp_path / "demo", seed=1, n_train=2, n_test=1, size=64)
    finally:
        os.umask(old)
    written = [workspace.data / WORKSPACE_MANIFEST, workspace.shards / INDEX_NAME,
               *workspace.shards.glob("*.tfrecord"), root / RECORD_NAME, sub.json_path, sub.zip_path]
    assert len(written) == 5 + 8
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in written} == {p.name: "0o644" for p in written}
    assert stat.S_IMODE(demo.stat().st_mode) == 0o755


def preds_for(root):
    m = np.zeros((1, 256, 256), bool)
    m[0, 10:20, 10:20] = True
    return {t.image_id: Detections.from_masks(m, [0.5]) for t in open_dataset(root).test}


# --------------------------------------------------------------------------- round 2
def test_a_zip_made_on_windows_with_backslash_names_unpacks_as_the_dataset(src, workspace, tmp_path):
    """PowerShell's Compress-Archive stores 'hw3\\train\\<ID>\\masks\\mask_0001.png'."""
    zip_path = tmp_path / "hw3.zip"
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                zf.write(p, "hw3\\" + "\\".join(p.relative_to(src).parts))
    assert all("\\" in n and "/" not in n for n in zipfile.ZipFile(zip_path).namelist())
    root, manifest = get(workspace, zip_path, manifest_of(src))
    assert files(root) == files(src)
    rows = prepare.check_dataset(root, manifest)
    assert len(open_dataset(root).train) == len([r for r in rows if r["split"] != "test"])
    assert partials(workspace.data) == []


def test_a_mask_fixed_in_the_source_reaches_its_shard(src, workspace, capsys):
    root, manifest = get(workspace, src, manifest_of(src))
    rows = prepare.choose_split(workspace, prepare.check_dataset(root, manifest), seed=0)
    write_shards(root, rows, workspace.shards, progress=False, verbose=False)
    item = train_item(src, 1)
    mask = item.mask_paths[0]
    a = np.asarray(Image.open(mask)).copy()
    ys, xs = np.nonzero(a)
    a[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = 255  # the user redraws the nucleus as its box
    save_png(mask, a)

    capsys.readouterr()
    root, manifest = get(workspace, src, manifest_of(src))
    assert "replaced (the source changed" in capsys.readouterr().out
    rows = prepare.choose_split(workspace, prepare.check_dataset(root, manifest), seed=0)
    rep = write_shards(root, rows, workspace.shards, progress=False, verbose=False)["report"]
    shard = next(r["shard"] for r in rows if r["image_id"] == item.image_id)
    assert rep.written == [shard] and len(rep.skipped) == len(rows) - 1
    got = read_shard(workspace.shards / shard)
    k = [p.name for p in sorted(item.mask_paths)].index(mask.name)
    assert np.array_equal(got["masks"][k], a > 0)
    verify_shards(workspace.shards, root, progress=False)

    # nothing touched: nothing is read again or rewritten
    rep = write_shards(root, rows, workspace.shards, progress=False, verbose=False)["report"]
    assert rep.written == [] and len(rep.skipped) == len(rows)


def test_a_full_disk_while_writing_shards_names_the_shards_folder(src, small_disk):
    from helpers.atomic import FolderNotWritable

    rows = read_manifest(manifest_of(src))
    (small_disk / "shards").mkdir()
    small_disk.fill()
    with pytest.raises(FolderNotWritable, match=rf"{small_disk / 'shards'} is full .*this file needs \d+ KB"):
        write_shards(src, rows, small_disk / "shards", progress=False, verbose=False)
    assert partials(small_disk / "shards") == []


def test_a_full_disk_names_the_folder_and_the_space_needed(src, small_disk):
    from helpers.atomic import FolderNotWritable
    from helpers.workspace import get_workspace

    ws = get_workspace(small_disk / "ws")
    rows = read_manifest(manifest_of(src))
    small_disk.fill()
    with pytest.raises(FolderNotWritable, match=rf"{ws.data} is full \(.* free; this file needs \d+(\.\d)? [KM]B\) "
                                                r"while writing manifest.csv: free some space"):
        prepare.choose_split(ws, rows, val_ids=[rows[0]["image_id"]])
    assert partials(ws.data) == [] and not (ws.data / "manifest.csv").exists()


def test_a_finished_workspace_is_read_again_without_writing(src, workspace, tmp_path):
    root, manifest = get(workspace, src, manifest_of(src))
    rows = prepare.choose_split(workspace, prepare.check_dataset(root, manifest), seed=0)
    write_shards(root, rows, workspace.shards, progress=False, verbose=False)
    before = {str(p): p.stat().st_mtime_ns for p in workspace.root.rglob("*")}
    # notebook 01 again, nothing changed: nothing is written (a read-only copy of it would work)
    root, manifest = get(workspace, src, manifest_of(src))
    rows = prepare.choose_split(workspace, prepare.check_dataset(root, manifest), seed=0)
    write_shards(root, rows, workspace.shards, progress=False, verbose=False)
    assert {str(p): p.stat().st_mtime_ns for p in workspace.root.rglob("*")} == before


def test_a_read_only_copy_of_a_finished_workspace_reads_and_a_needed_write_names_the_folder(src, disk):
    """A finished workspace on a disk remounted read-only: notebook 01 again writes nothing and
    succeeds; a change that needs a write (another validation split) names the read-only folder."""
    from helpers.atomic import FolderNotWritable
    from helpers.workspace import get_workspace

    mounted = disk(64)
    ws = get_workspace(mounted / "ws")
    root, manifest = get(ws, src, manifest_of(src))
    rows = prepare.choose_split(ws, prepare.check_dataset(root, manifest), seed=0)
    write_shards(root, rows, ws.shards, progress=False, verbose=False)
    before = {str(p): p.read_bytes() for p in ws.root.rglob("*") if p.is_file()}
    mounted.read_only()
    with pytest.raises(OSError):
        (ws.root / "probe").write_text("x")  # the disk really is read-only

    root, manifest = get(ws, src, manifest_of(src))
    rows = prepare.choose_split(ws, prepare.check_dataset(root, manifest), seed=0)
    rep = write_shards(root, rows, ws.shards, progress=False, verbose=False)["report"]
    assert rep.written == [] and len(rep.skipped) == len(rows)

    other = [r["image_id"] for r in rows if r["split"] == "train"][:1]
    with pytest.raises(FolderNotWritable, match=rf"{ws.data} is read-only \(cannot write manifest.csv\): "
                                                "use a workspace you can write to"):
        prepare.choose_split(ws, rows, val_ids=other)
    assert {str(p): p.read_bytes() for p in ws.root.rglob("*") if p.is_file()} == before
