"""Complete vs torn checkpoints, on small real TensorFlow checkpoints."""
import pytest

from helpers.train import checkpoints as ckpts


@pytest.fixture()
def stage_dir(tmp_path):
    """A stage folder with ckpt-5 and ckpt-10 written by tf.train.CheckpointManager."""
    import tensorflow as tf

    step = tf.Variable(0, dtype=tf.int64)
    w = tf.Variable(tf.zeros([64, 64]))
    ck = tf.train.Checkpoint(global_step=step, w=w)
    mgr = tf.train.CheckpointManager(ck, str(tmp_path), max_to_keep=3)
    for s in (5, 10):
        step.assign(s)
        w.assign(tf.fill([64, 64], float(s)))
        mgr.save(checkpoint_number=s)
    return tmp_path


def _data(d, step):
    return next(d.glob(f"ckpt-{step}.data-*"))


def test_complete_checkpoints_are_found(stage_dir):
    assert [s for s, _ in ckpts.list_checkpoints(stage_dir)] == [5, 10]
    assert ckpts.check_checkpoint(stage_dir / "ckpt-10") is None
    assert ckpts.latest_complete(stage_dir)[0] == 10
    assert ckpts.checkpoint_step(stage_dir / "ckpt-10") == 10


def test_truncated_data_falls_back_with_warning_and_is_never_loaded(stage_dir):
    import tensorflow as tf

    f = _data(stage_dir, 10)
    with open(f, "r+b") as h:
        h.truncate(f.stat().st_size - 100)
    # even the cheap check (sizes + the small string tensors) sees a torn tail
    assert ckpts.check_checkpoint(stage_dir / "ckpt-10", deep=False) is not None
    with pytest.warns(ckpts.TornCheckpointWarning, match="ckpt-10.*using ckpt-5"):
        step, prefix = ckpts.latest_complete(stage_dir)
    assert step == 5
    # moved aside (kept), and TF's state file now names ckpt-5: CheckpointManager restores that
    assert (stage_dir / "torn" / f.name).exists() and not f.exists()
    assert "Read less bytes" in (stage_dir / "torn" / "ckpt-10.reason.txt").read_text()
    assert tf.train.latest_checkpoint(str(stage_dir)).endswith("ckpt-5")
    v = tf.Variable(tf.zeros([64, 64]))
    tf.train.Checkpoint(w=v).read(tf.train.latest_checkpoint(str(stage_dir))).expect_partial()
    assert float(v[0, 0]) == 5.0


def test_corrupt_bytes_are_caught_by_the_deep_check(stage_dir):
    f = _data(stage_dir, 10)
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size, one flipped byte in a tensor
    f.write_bytes(bytes(raw))
    assert ckpts.check_checkpoint(stage_dir / "ckpt-10", deep=False) is None  # sizes look fine
    assert "unreadable" in ckpts.check_checkpoint(stage_dir / "ckpt-10", deep=True)
    with pytest.warns(ckpts.TornCheckpointWarning):
        assert ckpts.latest_complete(stage_dir)[0] == 5


def test_truncated_tensor_data_is_caught_by_sizes(stage_dir):
    f = _data(stage_dir, 10)
    with open(f, "r+b") as h:
        h.truncate(f.stat().st_size // 2)
    reason = ckpts.check_checkpoint(stage_dir / "ckpt-10", deep=False)
    assert reason is not None


@pytest.mark.parametrize("damage", ["empty_index", "truncated_index", "no_data"])
def test_other_torn_shapes(stage_dir, damage):
    idx = stage_dir / "ckpt-10.index"
    if damage == "empty_index":
        idx.write_bytes(b"")
    elif damage == "truncated_index":
        idx.write_bytes(idx.read_bytes()[: idx.stat().st_size // 2])
    else:
        _data(stage_dir, 10).unlink()
    assert ckpts.check_checkpoint(stage_dir / "ckpt-10") is not None
    with pytest.warns(ckpts.TornCheckpointWarning):
        assert ckpts.latest_complete(stage_dir)[0] == 5


def test_all_torn_means_none_and_no_state_left(stage_dir):
    import tensorflow as tf

    for s in (5, 10):
        f = _data(stage_dir, s)
        with open(f, "r+b") as h:
            h.truncate(10)
    with pytest.warns(ckpts.TornCheckpointWarning, match="no complete checkpoint left"):
        assert ckpts.latest_complete(stage_dir) is None
    assert tf.train.latest_checkpoint(str(stage_dir)) is None


def test_without_repair_nothing_moves(stage_dir):
    f = _data(stage_dir, 10)
    with open(f, "r+b") as h:
        h.truncate(10)
    with pytest.warns(ckpts.TornCheckpointWarning):
        assert ckpts.latest_complete(stage_dir, repair=False)[0] == 5
    assert f.exists() and not (stage_dir / "torn").exists()


@pytest.mark.parametrize("name", ["ws [x]", "ws*", "ws?"])
def test_a_folder_tensorflow_reads_as_a_pattern_moves_nothing(stage_dir, tmp_path_factory, name):
    """TensorFlow reads [ ] * ? in a path as a glob, so it cannot find the checkpoints of such a
    folder though they are whole: the folder is named, and nothing is moved to torn/."""
    import shutil

    from helpers.workspace import WorkspaceError, get_workspace

    moved = tmp_path_factory.mktemp("copy") / name
    shutil.copytree(stage_dir, moved)
    before = sorted(p.name for p in moved.iterdir())
    with pytest.raises(WorkspaceError, match=r"as a pattern.*without any of \[ \] \* \?"):
        ckpts.latest_complete(moved)
    assert sorted(p.name for p in moved.iterdir()) == before and not (moved / ckpts.TORN_DIR).exists()
    with pytest.raises(WorkspaceError, match="Rename the folder"):
        get_workspace(moved.parent / name / "workspace")


def test_a_file_is_not_a_workspace(tmp_path):
    from helpers.workspace import WorkspaceError, get_workspace

    (tmp_path / "passwd").write_text("root:x:0:0\n")
    with pytest.raises(WorkspaceError, match="passwd is a file, not a folder"):
        get_workspace(tmp_path / "passwd")
    assert (tmp_path / "passwd").read_text() == "root:x:0:0\n"
