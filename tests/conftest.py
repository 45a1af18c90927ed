import json
import os
import sys
import types
from pathlib import Path

import pytest

from _answers import SIZE, A, B

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get("NUCLEI_REAL_DATA", REPO.parent / "shared" / "data" / "vrdl_hw3"))


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The course dataset in ../shared; tests using it skip when it is absent (users do not
    have it), and fail when ``NUCLEI_REQUIRE_REAL_DATA`` is set (CI, which has it)."""
    if not (REAL_DATA / "train").is_dir():
        why = f"real dataset not found at {REAL_DATA} (set NUCLEI_REAL_DATA to point at it)"
        if os.environ.get("NUCLEI_REQUIRE_REAL_DATA"):
            pytest.fail(why + "; NUCLEI_REQUIRE_REAL_DATA is set, so this is an error")
        pytest.skip(why)
    return REAL_DATA


@pytest.fixture()
def workspace(tmp_path, monkeypatch):
    """A fresh local workspace for one test."""
    from helpers.workspace import get_workspace

    monkeypatch.setenv("NUCLEI_WORKSPACE", str(tmp_path / "ws"))
    return get_workspace()


@pytest.fixture()
def test_ids(tmp_path):
    """test_img_ids.json for tests/_answers.py's two images (A: id 3, B: id 7)."""
    # ids deliberately not in file order
    spec = {"images": [{"file_name": f"{B}.png", "id": 7, "height": SIZE[0], "width": SIZE[1]},
                       {"file_name": f"{A}.png", "id": 3, "height": SIZE[0], "width": SIZE[1]}]}
    path = tmp_path / "test_img_ids.json"
    path.write_text(json.dumps(spec))
    return path


@pytest.fixture()
def fake_colab(tmp_path, monkeypatch):
    """Stand-in for the google.colab package (the only thing mocked): its drive.mount creates
    MyDrive like Colab does, or raises ``fake_colab.error`` (a declined or timed-out consent).

    ``fake_colab.mounts`` lists the mount calls; Drive's mountpoint is under tmp_path.
    """
    state = types.SimpleNamespace(mounts=[], error=None)

    def mount(path):
        state.mounts.append(path)
        if state.error is not None:
            raise state.error
        (Path(path) / "MyDrive").mkdir(parents=True, exist_ok=True)

    pkg = types.ModuleType("google.colab")
    pkg.drive = types.SimpleNamespace(mount=mount)
    google = types.ModuleType("google")
    google.colab = pkg
    monkeypatch.setitem(sys.modules, "google.colab", pkg)
    monkeypatch.setitem(sys.modules, "google", google)
    from helpers import colab

    monkeypatch.setattr(colab, "DRIVE_MOUNTPOINT", tmp_path / "content" / "drive")
    monkeypatch.delenv("NUCLEI_WORKSPACE", raising=False)
    return state


@pytest.fixture(scope="session")
def demo_workflow(tmp_path_factory):
    """The README's demo (notebooks 01→05, headless, demo profile) run once per session.

    Returns the workspace; the executed notebooks are in ``ws.runs``.
    """
    from helpers.notebooks import run_workflow
    from helpers.workspace import get_workspace

    root = tmp_path_factory.getbasetemp() / "demo_workflow"
    run_workflow("demo", workspace_root=root)
    return get_workspace(root)


@pytest.fixture(scope="module")
def demo_copy(demo_workflow, tmp_path_factory):
    """This test module's own copy of :func:`demo_workflow`'s workspace: what its tests write
    (predictions, exports, runs of notebook 06) stays out of the session's workspace."""
    import shutil

    from helpers.workspace import get_workspace

    root = tmp_path_factory.mktemp("demo_copy") / "ws"
    shutil.copytree(demo_workflow.root, root, symlinks=True)
    return get_workspace(root)


class SmallDisk(type(Path())):
    """A folder on a tmpfs of its own: ``fill()`` takes its free space, as a full Drive or runtime
    disk; ``read_only()`` remounts it read-only, as a shared or write-protected copy."""

    def fill(self, leave: int = 0):
        """Take every free byte but about ``leave`` (rounded to the file system's blocks)."""
        filler = self / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
        if leave:
            os.truncate(filler, max(0, filler.stat().st_size - leave))

    def read_only(self):
        _run("mount", "-o", "remount,ro", str(self))


def _run(*cmd) -> bool:
    import subprocess

    return subprocess.run(cmd, capture_output=True).returncode == 0


@pytest.fixture()
def disk(tmp_path):
    """``disk(size_mb)``: a tmpfs of that size (skips where mounting is not allowed: it needs root)."""
    mounted = []

    def make(size_mb: float) -> SmallDisk:
        mnt = tmp_path / f"disk{len(mounted)}"
        mnt.mkdir()
        if not _run("mount", "-t", "tmpfs", "-o", f"size={int(size_mb * 1024)}k", "tmpfs", str(mnt)):
            pytest.skip("cannot mount a tmpfs here (needs root): the full or read-only disk is not recreated")
        mounted.append(mnt)
        return SmallDisk(mnt)

    yield make
    for mnt in mounted:
        _run("umount", "-l", str(mnt))


@pytest.fixture()
def small_disk(disk):
    """A 2 MB disk of its own."""
    return disk(2)


@pytest.fixture(scope="session")
def base(tmp_path_factory):
    """The shared folder of the training tests (demo shards, trained stages)."""
    return tmp_path_factory.getbasetemp() / "training"


@pytest.fixture(scope="session")
def heads(base):
    """The demo heads stage trained to the end once per session: (workspace, StageResult)."""
    from _training_support import trained

    ws, res = trained(base, ("heads",))
    return ws, res["heads"]


@pytest.fixture(scope="session")
def heads_and_all(base, heads):
    """The demo `all` stage trained to the end from :func:`heads`, once per session:
    (workspace, StageResult of `all`)."""
    from _training_support import trained

    ws, res = trained(base, ("heads", "all"))
    return ws, res["all"]


# Under pytest-xdist (`bash bin/test` runs 2 workers), a worker takes whole test files, so each
# file's module fixtures are built once; the files that share the demo workflow go together too
# (it is the longest fixture: notebooks 01→05). xdist's own `xdist_group` marks do not group under
# pytest 9 (xdist 3.8 renames `item._nodeid`, which pytest 9 no longer reads), hence a scheduler.
SHARED_FIXTURE_GROUPS = {"test_predict.py": "demo_workflow", "test_selection.py": "demo_workflow",
                         "test_workflow.py": "demo_workflow"}


@pytest.hookimpl(optionalhook=True)  # the Colab-like env runs without xdist
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class WholeFiles(LoadScopeScheduling):
        """``--dist loadfile``, with the files of :data:`SHARED_FIXTURE_GROUPS` as one unit."""

        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return SHARED_FIXTURE_GROUPS.get(Path(path).name, path)

    return WholeFiles(config, log)
