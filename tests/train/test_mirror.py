"""Checkpoints saved on local disk and mirrored to a (Drive-like) workspace folder.

Real Model Garden training on the demo profile; "Drive" is a plain folder, and a killed
runtime is a SIGKILLed child process whose local folder is then thrown away.
"""
import itertools
import os
import shutil
import signal
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from _training_support import model_vars, new_workspace, optimizer_iterations, run_child
from helpers import colab
from helpers.atomic import PARTIAL_MARKER
from helpers.train import checkpoints as ckpts
from helpers.train import mirror, training


@pytest.fixture(scope="session")
def base(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "mirror"


@pytest.fixture(scope="session")
def mirrored(base):
    """The heads stage trained with checkpoints on 'local disk', mirrored to the workspace."""
    ws = new_workspace(base, "drive")
    local = base / "local"
    res = training.train_stage("heads", "demo", ws, local_checkpoints=local, progress=False)
    return ws, mirror.local_checkpoint_root(ws.root, local) / "heads", res


def leftovers(folder):
    return [p.name for p in folder.rglob("*") if p.name.endswith(PARTIAL_MARKER)]


def copy_stage(src, dest, steps):
    """A stage folder holding only the checkpoints ``steps`` of ``src`` (plus its record)."""
    dest.mkdir(parents=True)
    shutil.copy2(src / "stage.json", dest / "stage.json")
    if (src / "base").is_dir():  # the stage's base: the weights its Drive copies leave to it
        shutil.copytree(src / "base", dest / "base")
    for step in steps:
        for f in src.glob(f"ckpt-{step}.*"):
            shutil.copy2(f, dest / f.name)
    ckpts.write_state(dest)
    return dest


def drive_stage(local0, remote, steps):
    """What the run's mirror leaves on Drive for ``steps`` of the local stage ``local0``, each
    copied in turn. The run's own copier copies only the newest checkpoint, so when the saves
    outpace it (a loaded machine) its Drive lacks some of them: a test that needs them makes
    them this way, not by the run's timing."""
    import tensorflow as tf

    src = remote.parent / f"{remote.name}_saved"
    src.mkdir(parents=True)
    remote.mkdir(parents=True)
    for folder in (src, remote):
        shutil.copy2(local0 / "stage.json", folder / "stage.json")
    m = mirror.CheckpointMirror(src, remote, keep=len(steps), base=True)
    for step in steps:
        for f in local0.glob(f"ckpt-{step}.*"):
            shutil.copy2(f, src / f.name)
        tf.compat.v1.train.update_checkpoint_state(str(src), f"ckpt-{step}")
        assert m.mirror_newest() is not None and m.error is None
    assert [s for s, _ in ckpts.list_checkpoints(remote)] == list(steps)
    return remote


def test_mirrored_run_puts_every_checkpoint_complete_on_drive(mirrored):
    ws, local, res = mirrored
    sdir = ws.checkpoints / "heads"
    assert res.status == "finished" and res.end_step == 10
    assert res.checkpoint == sdir / "ckpt-10"  # the result names the workspace copy
    # the newest always; those before it unless a save landed while the copier was busy (it
    # then copies the newest only)
    on_drive = [s for s, _ in ckpts.list_checkpoints(sdir)]
    assert on_drive[-1] == 10 and set(on_drive) <= {0, 5, 10}, on_drive
    for _, prefix in ckpts.list_checkpoints(sdir):
        assert ckpts.check_checkpoint(prefix) is None
    import tensorflow as tf
    assert tf.train.latest_checkpoint(str(sdir)).endswith("ckpt-10")
    # Drive holds the compact copy (helpers.train.drive_copy): its expansion is the local
    # checkpoint's weights to float16's precision (the frozen backbone exact, from the base)
    from helpers.train import drive_copy

    assert drive_copy.is_compact(sdir / "ckpt-10") and drive_copy.read_base(sdir) is not None
    mine, theirs = model_vars(local / "ckpt-10"), model_vars(drive_copy.full_checkpoint(sdir / "ckpt-10"))
    assert mine.keys() == theirs.keys() and len(mine) > 50
    for k in mine:
        np.testing.assert_allclose(theirs[k], mine[k], rtol=2 ** -11, atol=1e-7, err_msg=k)
        if k.startswith("backbone/"):
            np.testing.assert_array_equal(theirs[k], mine[k], err_msg=k)
    assert optimizer_iterations(sdir / "ckpt-10") == 10
    events = sorted(p.name for p in (sdir / "train").glob("events.out.tfevents.*"))
    assert events and events == sorted(p.name for p in (local / "train").glob("events.out.tfevents.*"))
    assert (sdir / "stage.json").read_bytes() == (local / "stage.json").read_bytes()
    assert leftovers(sdir) == [] and not (local / mirror.SNAPSHOT_DIR).exists()


def test_loss_curves_read_from_the_mirrored_workspace(mirrored):
    from helpers.train.curves import read_curves

    ws, _, _ = mirrored
    steps, _ = read_curves(ws, "heads")["total_loss"]
    assert steps == list(range(1, 11))


def test_kill_during_the_drive_copy_keeps_the_previous_checkpoint_and_resume_uses_it(base, mirrored):
    ws = new_workspace(base, "killed_drive")
    sdir = ws.checkpoints / "heads"
    local1 = base / "killed_local_1"
    # The runtime dies half-way through copying ckpt-10's data to "Drive".
    code = f"""
import time
from pathlib import Path
from helpers import colab
from helpers.train import mirror, training
real = mirror.copy_file
def slow(src, dst, **kw):
    if Path(src).name.startswith("ckpt-10.data"):
        with open(src, "rb") as f, open(dst, "wb") as g:
            g.write(f.read(Path(src).stat().st_size // 2))
            g.flush()
        print("HALF-COPIED", flush=True)
        time.sleep(600)
    real(src, dst, **kw)
mirror.copy_file = slow
training.train_stage("heads", "demo", {str(ws.root)!r}, local_checkpoints={str(local1)!r},
                     progress=False)
"""
    child = run_child(code)
    output = []
    try:
        for line in child.stdout:  # wait for the event, not a clock: the half is written and flushed
            output.append(line)
            if "HALF-COPIED" in line:
                break
        assert child.poll() is None, "child ended before copying ckpt-10:\n" + "".join(output)
        assert any(p.name.startswith(".ckpt-10.data") for p in sdir.glob("*" + PARTIAL_MARKER))
        os.kill(child.pid, signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
    # ckpt-10 is absent, not torn. ckpt-5 is there unless the copier woke after ckpt-10 was
    # saved: it copies only the newest (seen under load in CI), so Drive then holds ckpt-0.
    on_drive = [s for s, _ in ckpts.list_checkpoints(sdir)]
    assert on_drive in ([0, 5], [0]), on_drive
    assert ckpts.check_checkpoint(sdir / f"ckpt-{on_drive[-1]}") is None
    assert leftovers(sdir)  # the killed copy's temp file is there ...

    # A new runtime: the local disk is gone (a fresh local folder); resume from Drive's newest.
    res = training.train_stage("heads", "demo", ws, local_checkpoints=base / "killed_local_2",
                               progress=False)
    assert (res.start_step, res.end_step, res.status) == (on_drive[-1], 10, "finished")
    assert res.optimizer_iterations == mirrored[2].optimizer_iterations == 10
    assert res.learning_rate == pytest.approx(mirrored[2].learning_rate, rel=1e-6)
    assert leftovers(sdir) == []  # ... and the next run removed it
    assert ckpts.check_checkpoint(sdir / "ckpt-10") is None
    assert optimizer_iterations(sdir / "ckpt-10") == 10


def test_resume_prefers_local_disk_when_it_is_newer(base, mirrored):
    _, local0, _ = mirrored
    # The runtime lived, but the process died before the last copy: local 10, Drive 5.
    ws = new_workspace(base, "local_newer")
    sdir = drive_stage(local0, ws.checkpoints / "heads", [0, 5])
    root = base / "local_newer_local"
    local = mirror.local_checkpoint_root(ws.root, root) / "heads"
    copy_stage(local0, local, [0, 5, 10])
    shutil.copy2(sdir / "stage.json", local / "stage.json")
    (latest, where) = mirror.resume_point(local, sdir)
    assert (latest[0], where) == (10, "local")
    res = training.train_stage("heads", "demo", ws, local_checkpoints=root, progress=False)
    assert res.status.startswith("skipped") and res.end_step == 10
    assert res.checkpoint == sdir / "ckpt-10"  # published to Drive on the way
    assert ckpts.check_checkpoint(sdir / "ckpt-10") is None


def test_resume_prefers_drive_when_it_is_newer(base, mirrored):
    _, local0, _ = mirrored
    ws = new_workspace(base, "drive_newer")
    sdir = drive_stage(local0, ws.checkpoints / "heads", [0, 5, 10])
    local = copy_stage(local0, base / "drive_newer_local", [0, 5])
    (latest, where) = mirror.resume_point(local, sdir)
    assert (latest, where) == ((10, sdir / "ckpt-10"), "drive")
    prefix = mirror.bring_local(latest[1], local)
    import tensorflow as tf
    assert prefix == local / "ckpt-10" and tf.train.latest_checkpoint(str(local)) == str(prefix)
    assert ckpts.check_checkpoint(prefix) is None
    # A finished stage on Drive is skipped without copying anything to local disk.
    root = base / "drive_newer_fresh"
    res = training.train_stage("heads", "demo", ws, local_checkpoints=root, progress=False)
    assert res.status.startswith("skipped") and res.checkpoint == sdir / "ckpt-10"
    assert not list((mirror.local_checkpoint_root(ws.root, root) / "heads").glob("ckpt-*"))


def test_drive_checkpoint_whose_upload_was_cut_falls_back_to_the_one_before(base, mirrored):
    _, local0, _ = mirrored
    sdir = drive_stage(local0, base / "cut_drive" / "heads", [0, 5, 10])
    data = next(sdir.glob("ckpt-10.data-*"))
    with open(data, "r+b") as f:  # the state file names ckpt-10, but Drive got only part of it
        f.truncate(data.stat().st_size // 3)
    with pytest.warns(ckpts.TornCheckpointWarning, match="ckpt-10"):
        latest, where = mirror.resume_point(base / "cut_local", sdir)
    assert (latest, where) == ((5, sdir / "ckpt-5"), "drive")


def test_failed_copy_keeps_drive_as_it_was_and_says_so(base, mirrored, monkeypatch):
    _, local0, _ = mirrored
    local = copy_stage(local0, base / "full_local", [0, 5, 10])
    remote = drive_stage(local0, base / "full_drive", [0, 5])

    def disk_full(src, dst, **kw):
        with open(dst, "wb") as f:
            f.write(b"\0" * 100)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mirror, "copy_file", disk_full)
    m = mirror.CheckpointMirror(local, remote).start()
    with pytest.raises(mirror.MirrorError, match=r"ckpt-10 is saved on this runtime's disk.*full_drive is full .* free some space"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m.close()
    assert [s for s, _ in ckpts.list_checkpoints(remote)] == [0, 5] and leftovers(remote) == []
    assert ckpts.check_checkpoint(remote / "ckpt-5") is None


def test_mirror_keeps_the_newest_few_and_skips_to_the_newest(base, mirrored):
    _, local0, _ = mirrored
    local = copy_stage(local0, base / "keep_local", [0, 5, 10])
    remote = base / "keep_drive"
    m = mirror.CheckpointMirror(local, remote, keep=2)
    m.close()  # one copy: the newest (10), not 0 and 5 one after the other
    assert [c.step for c in m.copies] == [10]
    assert [s for s, _ in ckpts.list_checkpoints(remote)] == [10]
    import tensorflow as tf
    assert tf.train.latest_checkpoint(str(remote)).endswith("ckpt-10")
    shutil.copy2(local / "ckpt-10.index", local / "ckpt-15.index")  # pretend two more saves
    shutil.copy2(next(local.glob("ckpt-10.data-*")), local / "ckpt-15.data-00000-of-00001")
    shutil.copy2(local / "ckpt-10.index", local / "ckpt-20.index")
    shutil.copy2(next(local.glob("ckpt-10.data-*")), local / "ckpt-20.data-00000-of-00001")
    for step in (15, 20):
        ckpts.write_state(local)
        tf.compat.v1.train.update_checkpoint_state(str(local), f"ckpt-{step}")
        m.mirror_newest()
    assert [s for s, _ in ckpts.list_checkpoints(remote)] == [15, 20]  # keep=2


def test_the_end_of_a_run_abandons_a_copy_that_a_newer_checkpoint_supersedes(base, mirrored,
                                                                              monkeypatch):
    import threading

    import tensorflow as tf

    _, local0, _ = mirrored
    local = copy_stage(local0, base / "supersede_local", [5, 10])
    tf.compat.v1.train.update_checkpoint_state(str(local), "ckpt-5")  # newest saved: 5, for now
    remote = base / "supersede_drive"
    copying, real, abandoned = threading.Event(), mirror.copy_file, []

    def slow_drive(src, dst, abandon=None):  # 5 KB/s for ckpt-5: its copy would take hours
        with open(src, "rb") as f, open(dst, "wb") as g:
            for n in itertools.count():
                chunk = f.read(5000)
                if not chunk:
                    break
                copying.set()
                if abandon is not None and abandon():
                    abandoned.append(Path(src).name)
                    raise mirror.CopyAbandoned(str(src))
                if "ckpt-5" in str(src):
                    assert n < 60, "the copy of ckpt-5 was not abandoned"
                    time.sleep(1)
                g.write(chunk)

    monkeypatch.setattr(mirror, "copy_file", slow_drive)
    m = mirror.CheckpointMirror(local, remote, poll_s=0.05).start()
    assert copying.wait(60)  # the background copy of ckpt-5 is under way ...
    tf.compat.v1.train.update_checkpoint_state(str(local), "ckpt-10")  # ... when the run's last save lands
    m.close()
    assert abandoned and abandoned[0].startswith("ckpt-5.")  # not waited for
    assert [c.step for c in m.copies] == [10] and m.error is None
    assert [s for s, _ in ckpts.list_checkpoints(remote)] == [10] and leftovers(remote) == []
    monkeypatch.setattr(mirror, "copy_file", real)
    assert ckpts.check_checkpoint(remote / "ckpt-10") is None


def test_leftovers_of_a_killed_copy_are_removed(tmp_path):
    (tmp_path / ".ckpt-10.data-00000-of-00001.partial").write_bytes(b"x")
    (tmp_path / "ckpt-10.data-00000-of-00001").write_bytes(b"x")  # data renamed, index never came
    (tmp_path / "ckpt-5.index").write_bytes(b"x")
    (tmp_path / "ckpt-5.data-00000-of-00001").write_bytes(b"x")
    (tmp_path / "notes.partial").write_bytes(b"mine")  # not ours: no leading dot
    gone = mirror.remove_leftovers(tmp_path)
    assert sorted(gone) == [".ckpt-10.data-00000-of-00001.partial", "ckpt-10.data-00000-of-00001"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ckpt-5.data-00000-of-00001", "ckpt-5.index", "notes.partial"]


def test_a_local_folder_from_another_run_is_set_aside(tmp_path):
    remote, local = tmp_path / "drive" / "heads", tmp_path / "local" / "heads"
    remote.mkdir(parents=True)
    local.mkdir(parents=True)
    (remote / "stage.json").write_text('{"created": "today"}')
    (local / "stage.json").write_text('{"created": "last week"}')
    (local / "ckpt-50.index").write_bytes(b"old run")
    mirror.prepare_local(local, remote)
    assert not (local / "ckpt-50.index").exists()
    assert (local / "stage.json").read_text() == '{"created": "today"}'
    assert (tmp_path / "local" / "heads.stale" / "ckpt-50.index").read_bytes() == b"old run"


def test_local_checkpoints_only_for_a_workspace_on_drive(tmp_path, monkeypatch):
    monkeypatch.delenv(training.LOCAL_CHECKPOINTS_ENV, raising=False)
    monkeypatch.setattr(colab, "DRIVE_MOUNTPOINT", tmp_path / "content" / "drive")
    monkeypatch.setattr(colab, "LOCAL_CHECKPOINTS", tmp_path / "content" / "nuclei_local")

    def root(workspace_root, local_checkpoints=None):  # as train_stage decides it
        return mirror.local_checkpoint_root(workspace_root, training.local_checkpoint_setting(local_checkpoints))

    assert root(tmp_path / "workspace") is None  # a local disk already
    on_drive = tmp_path / "content" / "drive" / "MyDrive" / "nuclei_workspace"
    got = root(on_drive)
    assert got.parent == tmp_path / "content" / "nuclei_local"
    assert got.name.startswith("nuclei_workspace-")
    assert root(on_drive, False) is None
    monkeypatch.setenv(training.LOCAL_CHECKPOINTS_ENV, "off")
    assert root(on_drive) is None
    monkeypatch.setenv(training.LOCAL_CHECKPOINTS_ENV, str(tmp_path / "fast"))
    assert root(tmp_path / "workspace").parent == tmp_path / "fast"
    assert mirror.local_checkpoint_root(tmp_path / "workspace") is None  # mirror itself reads no environment


# ----------------------------------------------------------------------------- Drive's quota
@pytest.fixture()
def fake_drive(tmp_path, monkeypatch):
    from _fake_drive import FakeDrive

    return FakeDrive(tmp_path / "MyDrive", monkeypatch)


def saved_locally(local, steps, size=256):
    """A local stage folder where tf.train.CheckpointManager saved ``steps`` (keep 3), as Model
    Garden's trainer does; yields after each save."""
    import tensorflow as tf

    step = tf.Variable(0, dtype=tf.int64)
    w = tf.Variable(tf.zeros([size, size]))
    ck = tf.train.Checkpoint(global_step=step, w=w)
    mgr = tf.train.CheckpointManager(ck, str(local), max_to_keep=3)
    for s in steps:
        step.assign(s)
        w.assign_add(tf.random.normal([size, size]))
        mgr.save(checkpoint_number=s)
        yield s


def test_drive_holds_at_most_keep_plus_one_checkpoints_trash_included(tmp_path, fake_drive):
    """N = keep + 1 = 4 checkpoints' bytes, live plus trashed: the ``keep`` newest, and the copy
    under way. A deleted checkpoint leaves its files in Drive's Trash with 0 bytes."""
    local, remote = tmp_path / "local" / "heads", fake_drive.root / "checkpoints" / "heads"
    drive = mirror.CheckpointMirror(local, remote, keep=3)
    remote.mkdir(parents=True)
    one, most = None, 0
    for _ in saved_locally(local, range(5, 205, 5)):
        drive.mirror_newest()
        one = one or drive.copies[0].nbytes
        most = max(most, fake_drive.used_bytes)
    assert len(drive.copies) == 40 and [s for s, _ in ckpts.list_checkpoints(remote)] == [190, 195, 200]
    small = 64 << 10  # TensorFlow's state file, replaced at each copy (a few hundred bytes each)
    assert most <= 4 * one + small, f"{most / one:.1f} checkpoints on Drive, Trash included"
    assert fake_drive.trash_bytes <= small and len(list(fake_drive.trash.iterdir())) >= 37 * 2


def test_a_copy_cut_off_on_drive_leaves_no_bytes_in_the_trash(tmp_path, fake_drive, monkeypatch):
    local, remote = tmp_path / "local" / "heads", fake_drive.root / "heads"
    real = mirror.copy_file

    def cut(src, dst, abandon=None):
        real(src, dst, abandon)
        if ".data-" in dst.name:
            raise OSError(5, "Input/output error")  # the mount went away after the bytes were written

    monkeypatch.setattr(mirror, "copy_file", cut)
    drive = mirror.CheckpointMirror(local, remote, keep=3)
    remote.mkdir(parents=True)
    for _ in saved_locally(local, [5]):
        assert drive.mirror_newest() is None and isinstance(drive.error, OSError)
    assert list(fake_drive.trash.iterdir()) and fake_drive.trash_bytes == 0
    assert ckpts.list_checkpoints(remote) == [] and leftovers(remote) == []


def test_event_files_grow_on_drive_by_appending(tmp_path, fake_drive):
    src, dest = tmp_path / "train", fake_drive.root / "train"
    src.mkdir()
    log = src / "events.out.tfevents.1"
    for i in range(20):
        with open(log, "ab") as f:
            f.write(os.urandom(10_000))
        mirror.mirror_tree(src, dest)
        assert (dest / log.name).read_bytes() == log.read_bytes()
    assert fake_drive.trash_bytes == 0
    (dest / log.name).write_bytes(log.read_bytes()[:49_996] + b"torn")  # no prefix of it any more
    mirror.mirror_tree(src, dest)
    assert (dest / log.name).read_bytes() == log.read_bytes()


def test_a_copy_abandoned_after_its_data_leaves_no_data_without_index_on_drive(tmp_path, fake_drive, monkeypatch):
    """The run ends while a copy is at its index: its data, already in place, is never loadable
    without it, so it goes too (emptied first), not left to hold Drive's space until the next run."""
    local, remote = tmp_path / "local" / "all", fake_drive.root / "all"
    real = mirror.copy_file

    def abandoned_at_the_index(src, dst, abandon=None):
        if Path(src).name.endswith(".index"):
            raise mirror.CopyAbandoned(str(src))
        real(src, dst, abandon)

    monkeypatch.setattr(mirror, "copy_file", abandoned_at_the_index)
    drive = mirror.CheckpointMirror(local, remote, keep=3)
    remote.mkdir(parents=True)
    for _ in saved_locally(local, [5]):
        assert drive.mirror_newest() is None
    assert sorted(p.name for p in remote.iterdir()) == [] and fake_drive.trash_bytes == 0


def test_the_next_stage_starts_from_the_heads_drive_copy_expanded(base, mirrored):
    """`all` starts from the heads stage's final checkpoint, which on Drive is a compact copy:
    Model Garden reads its expansion (the frozen backbone exact, from the base), and the record
    names the workspace's checkpoint."""
    import json

    from helpers.train import drive_copy

    ws0, local0, _ = mirrored
    ws = new_workspace(base, "next_stage_from_drive")
    copy_stage(ws0.checkpoints / "heads", ws.checkpoints / "heads", [10])
    assert drive_copy.is_compact(ws.checkpoints / "heads" / "ckpt-10")
    root = base / "next_stage_local"
    res = training.train_stage("all", "demo", ws, steps=2, local_checkpoints=root, progress=False)
    assert res.finished
    record = json.loads((ws.checkpoints / "all" / "stage.json").read_text())
    assert record["init_checkpoint"] == str(ws.checkpoints / "heads" / "ckpt-10")
    start = model_vars(mirror.local_checkpoint_root(ws.root, root) / "all" / "ckpt-0")
    heads = model_vars(local0 / "ckpt-10")
    backbone = [k for k in heads if k.startswith("backbone/")]
    assert backbone and all(np.array_equal(start[k], heads[k]) for k in backbone)
