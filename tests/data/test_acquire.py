import shutil
import zipfile
from pathlib import Path

import pytest

from helpers.data.acquire import RECORD_NAME, acquire_dataset, find_dataset_root, is_drive_source
from helpers.data.dataset import DatasetError, open_dataset
from helpers.data.demo_data import make_demo_dataset
from helpers.data.manifest import read_manifest


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "data", seed=0)


def listing(root):
    """Every file and its bytes (but the record of where an acquired copy came from)."""
    return sorted((str(p.relative_to(root)), p.read_bytes()) for p in Path(root).rglob("*")
                  if p.is_file() and p.name != RECORD_NAME)


def make_zip(src, zip_path, prefix=""):
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(Path(src).rglob("*")):
            if p.is_file():
                zf.write(p, prefix + str(p.relative_to(src)))
        if prefix:
            zf.writestr("__MACOSX/._junk", b"x")
    return zip_path


def leftovers(folder):
    return [p.name for p in Path(folder).iterdir() if p.name.endswith(".partial")]


def test_from_folder_then_rerun_is_a_noop(demo, tmp_path):
    dest = acquire_dataset(demo, tmp_path / "ws" / "data", manifest=demo / "data_manifest.csv", quiet=True)
    assert listing(dest) == listing(demo)
    stamp = {p: p.stat().st_mtime_ns for p in dest.rglob("*")}
    assert acquire_dataset(demo, dest, quiet=True) == dest  # same content: no-op
    assert acquire_dataset(demo, dest, manifest=demo / "data_manifest.csv", quiet=True) == dest
    assert {p: p.stat().st_mtime_ns for p in dest.rglob("*")} == stamp
    assert leftovers(dest.parent) == []


@pytest.mark.parametrize("prefix", ["", "dataset/"])
def test_from_zip_flat_or_nested(demo, tmp_path, prefix):
    z = make_zip(demo, tmp_path / "hw3.zip", prefix)
    dest = acquire_dataset(z, tmp_path / "data", manifest=read_manifest(demo / "data_manifest.csv"), quiet=True)
    assert listing(dest) == listing(demo)
    assert not (dest / "__MACOSX").exists()
    assert acquire_dataset(z, dest, quiet=True) == dest  # no-op against the zip listing
    assert leftovers(tmp_path) == []


def test_existing_destination_that_differs_is_never_overwritten(demo, tmp_path):
    dest = shutil.copytree(demo, tmp_path / "data")
    victim = next((dest / "train").iterdir()) / "masks" / "mask_0001.png"
    victim.unlink()
    before = listing(dest)
    with pytest.raises(DatasetError, match="already exists and differs.*nothing was overwritten"):
        acquire_dataset(demo, dest, quiet=True)
    with pytest.raises(DatasetError, match="already exists and differs from the manifest"):
        acquire_dataset(demo, dest, manifest=demo / "data_manifest.csv", quiet=True)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("user data")
    with pytest.raises(DatasetError, match="not a readable dataset.*nothing was overwritten"):
        acquire_dataset(demo, other, quiet=True)
    assert listing(dest) == before and (other / "mine.txt").read_text() == "user data"


def test_corrupt_zip_leaves_nothing(demo, tmp_path):
    z = make_zip(demo, tmp_path / "hw3.zip")
    data = z.read_bytes()
    z.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="hw3.zip is (neither a folder nor a readable zip|not a valid zip|corrupt)"):
        acquire_dataset(z, tmp_path / "data", quiet=True)
    assert not (tmp_path / "data").exists() and leftovers(tmp_path) == []


def test_manifest_mismatch_is_rejected_before_rename(demo, tmp_path):
    rows = read_manifest(demo / "data_manifest.csv")
    rows[0] = dict(rows[0], sha256="0" * 64)
    with pytest.raises(DatasetError, match="does not match the manifest.*sha256"):
        acquire_dataset(demo, tmp_path / "data", manifest=rows, quiet=True)
    assert not (tmp_path / "data").exists() and leftovers(tmp_path) == []


def test_zip_without_dataset(tmp_path):
    z = tmp_path / "x.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("readme.txt", "hi")
    with pytest.raises(DatasetError, match="hold none of the layouts notebook 01 reads"):
        acquire_dataset(z, tmp_path / "data", quiet=True)


def test_missing_source(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        acquire_dataset(tmp_path / "nope.zip", tmp_path / "data", quiet=True)


def test_find_dataset_root(demo, tmp_path):
    assert find_dataset_root(demo) == demo
    shutil.copytree(demo, tmp_path / "outer" / "hw3")
    assert find_dataset_root(tmp_path / "outer") == tmp_path / "outer" / "hw3"


def test_is_drive_source(tmp_path):
    assert is_drive_source("https://drive.google.com/file/d/1AbCdEfGhIjKlMnOpQrStUvWxYz012345/view?usp=sharing")
    assert is_drive_source("1AbCdEfGhIjKlMnOpQrStUvWxYz012345")
    assert not is_drive_source(str(tmp_path))
    assert not is_drive_source("hw3.zip")
    assert not is_drive_source("https://example.com/data.zip")


def test_drive_download_failure_is_a_clear_error(tmp_path):
    # gdown really runs; here Drive is unreachable (or the id does not exist): either way no file.
    # The cause must be a download error, not a bug (a TypeError once hid behind this advice).
    import gdown

    with pytest.raises(DatasetError, match="download the zip yourself") as err:
        acquire_dataset("1AbCdEfGhIjKlMnOpQrStUvWxYz012345", tmp_path / "data", quiet=True)
    assert isinstance(err.value.__cause__, (OSError, gdown.exceptions.FileURLRetrievalError)), err.value
    assert not (tmp_path / "data").exists() and leftovers(tmp_path) == []


def test_drive_source_with_dataset_already_present_is_a_noop(demo, tmp_path):
    dest = shutil.copytree(demo, tmp_path / "data")
    assert acquire_dataset("1AbCdEfGhIjKlMnOpQrStUvWxYz012345", dest,
                           manifest=demo / "data_manifest.csv", quiet=True) == dest
    assert open_dataset(dest).train_ids == open_dataset(demo).train_ids


@pytest.mark.parametrize("as_zip", [False, True])
def test_label_pairs_are_imported_once_and_again_when_the_options_change(demo, tmp_path, as_zip):
    from helpers.data.imported import ImportOptions, read_record
    from helpers.data.label_images import export_label_pairs

    pairs = export_label_pairs(demo, tmp_path / "mine" / "pairs")
    source = make_zip(pairs, tmp_path / "pairs.zip", "pairs/") if as_zip else pairs
    dest = acquire_dataset(source, tmp_path / "ws" / "data", quiet=True)
    assert open_dataset(dest).train_ids == open_dataset(demo).train_ids and read_record(dest)["layout"] == "labels"
    assert sum(r["n_nuclei"] for r in read_manifest(dest / "data_manifest.csv")) == sum(
        r["n_nuclei"] for r in read_manifest(demo / "data_manifest.csv") if r["split"] != "test")
    stamp = {p: p.stat().st_mtime_ns for p in dest.rglob("*")}
    assert acquire_dataset(source, dest, quiet=True) == dest  # the same source and options: a no-op
    assert {p: p.stat().st_mtime_ns for p in dest.rglob("*")} == stamp
    options = ImportOptions(pixel_size_um=0.5, classes=("Nucleus",))  # (label pairs have no classes to choose)
    acquire_dataset(source, dest, quiet=True, options=options)  # new options: import again
    assert {v["pixel_size_um"] for v in read_record(dest)["images"].values()} == {0.5}
    stamp = {p: p.stat().st_mtime_ns for p in dest.rglob("*")}
    assert acquire_dataset(source, dest, quiet=True, options=options) == dest  # the same options: a no-op
    assert {p: p.stat().st_mtime_ns for p in dest.rglob("*")} == stamp
    record = read_record(dest)  # where each image came from: the user's folder or zip, never a temp folder
    assert all(".partial" not in v["source"] for v in record["images"].values()) and ".partial" not in record["source"]
    assert str(source) in record["source"]
    assert leftovers(dest.parent) == [] and not list((tmp_path / "mine").glob(".*"))


def test_an_error_in_an_imported_layout_names_the_users_file(demo, tmp_path):
    from helpers.data.label_images import export_label_pairs

    pairs = export_label_pairs(demo, tmp_path / "pairs")
    victim = next((pairs / "labels").iterdir())
    victim.unlink()
    with pytest.raises(DatasetError, match="have no label image") as e:
        acquire_dataset(pairs, tmp_path / "data", quiet=True)
    assert str(pairs / "images") in str(e.value) and not (tmp_path / "data").exists()
