
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


def test_colab_workspace_is_on_drive(fake_colab, tmp_path):
    assert colab.in_colab()
    ws = workspace.get_workspace()
    assert ws.root == (tmp_path / "content" / "drive" / "MyDrive" / "nuclei_workspace").resolve()
    assert (ws.root / "shards").is_dir()
    assert fake_colab.mounts == [str(tmp_path / "content" / "drive")]
    # a second call does not mount again
    workspace.get_workspace()
    assert len(fake_colab.mounts) == 1


def test_colab_local_workspace_mounts_nothing(fake_colab, tmp_path, monkeypatch):
    ws = workspace.get_workspace(tmp_path / "content" / "nuclei_workspace")
    assert (ws.root / "checkpoints").is_dir()
    monkeypatch.setenv("NUCLEI_WORKSPACE", str(tmp_path / "content" / "other"))
    assert workspace.get_workspace().root == (tmp_path / "content" / "other").resolve()
    assert fake_colab.mounts == []


def test_colab_explicit_drive_folder_is_mounted(fake_colab, tmp_path):
    root = tmp_path / "content" / "drive" / "MyDrive" / "elsewhere"
    assert workspace.get_workspace(root).root == root.resolve()
    assert fake_colab.mounts == [str(tmp_path / "content" / "drive")]


def test_colab_declined_drive_says_what_to_do(fake_colab):
    fake_colab.error = ValueError("mount failed")
    with pytest.raises(colab.SetupError, match="allow access") as e:
        workspace.get_workspace()
    assert "workspace_root" in str(e.value) and "/content/nuclei_workspace" in str(e.value)


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


def test_what_killed_runs_left_is_swept_once_when_the_workspace_opens(tmp_path, capsys):
    """Temp files and folders of ours, untouched for half an hour, wherever a killed run left
    them; a fresh one (a live writer's) and the user's own files stay."""
    import os
    import time

    from helpers.atomic import LEFTOVER_AGE_S
    from helpers.workspace import get_workspace

    root = tmp_path / "ws"
    left = [root / "predictions" / "all" / ".X.json.k2j4h1_a.partial",
            root / "runs" / ".02_train_heads.ipynb.ab12cd34.partial.ipynb",
            root / "exports" / "mine" / ".a.geojson.zz9yy8xx.partial",
            root / "shards" / ".labeled-00.tfrecord.q1w2e3r4.partial"]
    folder = root / "data" / "own" / ".batch.partial"
    fresh = root / "predictions" / "all" / ".Y.json.fresh123.partial"
    mine = [root / "data" / "own" / "batch" / ".notes.txt", root / "exports" / "mine" / "a.partial.csv"]
    for f in [*left, fresh, *mine, folder / "a.png"]:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("x")
    old = time.time() - LEFTOVER_AGE_S - 60
    for f in [*left, folder / "a.png", folder]:
        os.utime(f, (old, old))
    get_workspace(root)
    assert not any(f.exists() for f in left) and not folder.exists()
    assert fresh.exists() and all(f.exists() for f in mine)
    assert "removed 5 temp file(s) that interrupted runs left" in capsys.readouterr().out
    old_fresh = time.time() - LEFTOVER_AGE_S - 60
    os.utime(fresh, (old_fresh, old_fresh))
    get_workspace(root)  # once a process
    assert fresh.exists()
