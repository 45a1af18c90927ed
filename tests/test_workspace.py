import sys
import types
from pathlib import Path

import pytest

from helpers import atomic, colab, workspace


def test_local_workspace_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("NUCLEI_WORKSPACE", str(tmp_path / "w"))
    monkeypatch.setattr(colab, "in_colab", lambda: False)
    ws = workspace.get_workspace()
    assert ws.root == (tmp_path / "w").resolve()
    for sub in ("data", "shards", "checkpoints", "predictions", "submission", "runs"):
        assert (ws.root / sub).is_dir()
    assert ws.checkpoints == ws.root / "checkpoints"


def test_local_workspace_default_is_cwd_workspace(tmp_path, monkeypatch):
    monkeypatch.delenv("NUCLEI_WORKSPACE", raising=False)
    monkeypatch.setattr(colab, "in_colab", lambda: False)
    monkeypatch.chdir(tmp_path)
    ws = workspace.get_workspace()
    assert ws.root == (tmp_path / "workspace").resolve()


@pytest.fixture()
def fake_colab(tmp_path, monkeypatch):
    """Stand-in for the google.colab package: its drive.mount creates MyDrive like Colab does."""
    mounts = []

    def mount(path):
        mounts.append(path)
        (Path(path) / "MyDrive").mkdir(parents=True, exist_ok=True)

    pkg = types.ModuleType("google.colab")
    pkg.drive = types.SimpleNamespace(mount=mount)
    google = types.ModuleType("google")
    google.colab = pkg
    monkeypatch.setitem(sys.modules, "google.colab", pkg)
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setattr(colab, "DRIVE_MOUNTPOINT", tmp_path / "content" / "drive")
    monkeypatch.delenv("NUCLEI_WORKSPACE", raising=False)
    return mounts


def test_colab_workspace_is_on_drive(fake_colab, tmp_path):
    assert colab.in_colab()
    ws = workspace.get_workspace()
    assert ws.root == (tmp_path / "content" / "drive" / "MyDrive" / "nuclei_workspace").resolve()
    assert (ws.root / "shards").is_dir()
    assert fake_colab == [str(tmp_path / "content" / "drive")]
    # a second call does not mount again
    workspace.get_workspace()
    assert len(fake_colab) == 1


def test_setup_off_colab_installs_nothing(monkeypatch):
    monkeypatch.setattr(colab, "in_colab", lambda: False)
    info = colab.setup()
    assert info["colab"] is False and "drive" not in info


def test_colab_install_keeps_colab_tensorflow():
    cmds = colab.colab_install_commands("2.19.0")
    flat = [" ".join(c) for c in cmds]
    assert "tf-models-official==2.19.*" in flat[0] and "--no-deps" in cmds[0]
    assert not any(arg.startswith("tensorflow==") or arg == "tensorflow" for c in cmds for arg in c)


def test_atomic_write_leaves_old_content_on_failure(tmp_path):
    target = tmp_path / "f.json"
    atomic.atomic_write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("half")
            assert atomic.is_partial(tmp)
            raise RuntimeError("disconnect")
    assert target.read_text().strip().replace(" ", "").replace("\n", "") == '{"a":1}'
    assert list(tmp_path.iterdir()) == [target]
