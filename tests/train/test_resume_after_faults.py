"""Training resumes to its target after the faults a Colab user meets.

Each test recreates a fault a Colab user meets (a 0-byte state file from Drive, a damaged
stage.json, a deleted index, a save killed half-way, ...) through the real entry points and
asserts what the user sees, that training resumes to its target, and that no valid
checkpoint is lost.
"""
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from _training_support import file_snapshot, new_workspace, run_child, tear
from helpers.train import checkpoints as ckpts
from helpers.train import training


def _half_trained(base, heads, name):
    """A copy of the finished demo heads stage cut back to step 5 of 10."""
    ws = new_workspace(base, name, copy_from=heads[0].root)
    sdir = ws.checkpoints / "heads"
    for f in sdir.glob("ckpt-10.*"):
        f.unlink()
    ckpts.write_state(sdir)
    return ws, sdir


@pytest.fixture()
def tiny(tmp_path):
    """A stage folder with ckpt-5, -10, -15 saved by tf.train.CheckpointManager (keep 3)."""
    import tensorflow as tf

    step = tf.Variable(0, dtype=tf.int64)
    ck = tf.train.Checkpoint(global_step=step, w=tf.Variable(tf.zeros([32, 32])))
    mgr = tf.train.CheckpointManager(ck, str(tmp_path), max_to_keep=3)
    for s in (5, 10, 15):
        step.assign(s)
        mgr.save(checkpoint_number=s)
        time.sleep(0.05)  # distinct timestamps
    return tmp_path, ck


# ----------------------------------------------------------------------------- 1: empty state file
def test_empty_state_file_is_rebuilt_and_training_resumes(base, heads):
    ws, sdir = _half_trained(base, heads, "empty_state")
    (sdir / "checkpoint").write_bytes(b"")  # Drive's typical failure
    with pytest.warns(ckpts.TornCheckpointWarning, match=r"checkpoint: it is empty .*rebuilt"):
        res = training.train_stage("heads", "demo", ws, progress=False)
    assert (res.start_step, res.end_step, res.status) == (5, 10, "finished")
    assert ckpts.state_problem(sdir) is None


def test_unparsable_state_file_is_rebuilt(tiny):
    d, _ = tiny
    (d / "checkpoint").write_text("model_checkpoint_path: \"ckpt-15\"\n@@garbage@@\n")
    with pytest.warns(ckpts.TornCheckpointWarning, match="does not parse"):
        assert ckpts.latest_complete(d)[0] == 15
    import tensorflow as tf

    assert tf.train.latest_checkpoint(str(d)).endswith("ckpt-15")


# ----------------------------------------------------------------------------- torn fallback, for real
def test_torn_newest_checkpoint_resumes_from_the_one_before_and_reaches_the_target(base, heads):
    ws = new_workspace(base, "torn_resume", copy_from=heads[0].root)
    sdir = ws.checkpoints / "heads"
    tear(sdir, 10)
    kept = file_snapshot(sdir)
    with pytest.warns(ckpts.TornCheckpointWarning, match="ckpt-10"):
        res = training.train_stage("heads", "demo", ws, progress=False)
    assert (res.start_step, res.end_step) == (5, 10) and res.finished
    assert (sdir / "torn" / "ckpt-10.index").exists()  # kept for inspection, never loaded
    assert kept["ckpt-5.index"] == file_snapshot(sdir)["ckpt-5.index"]  # the good one untouched


# ----------------------------------------------------------------------------- 11: deleted index
def test_deleted_newest_index_falls_back_with_a_warning(tiny):
    d, _ = tiny
    (d / "ckpt-15.index").unlink()
    with pytest.warns(ckpts.TornCheckpointWarning, match=r"ckpt-15 .*ckpt-15\.index is missing.*ckpt-10"):
        assert ckpts.latest_complete(d)[0] == 10
    assert list((d / "torn").glob("ckpt-15.data-*"))  # set aside, not deleted


# ----------------------------------------------------------------------------- 12: save leftovers
def test_leftover_temp_folder_of_a_failed_save_is_removed(tiny):
    d, _ = tiny
    temp = d / "ckpt-20_temp"
    (temp / "part-00000-of-00001").mkdir(parents=True)
    (temp / "part-00000-of-00001" / "data").write_bytes(b"x" * 1000)
    assert ckpts.latest_complete(d)[0] == 15
    assert not temp.exists()
    assert [s for s, _ in ckpts.list_checkpoints(d)] == [5, 10, 15]


def test_sigkill_during_a_save_leaves_nothing_behind_and_resumes(base, heads):
    """Kill the training process while TensorFlow is writing a checkpoint (its temp folder
    exists), then resume: the run reaches its target and no temp folder remains."""
    ws = new_workspace(base, "kill_in_save", copy_from=heads[0].root)
    sdir = ws.checkpoints / "all"
    child = run_child(f"""
from helpers.train import training
training.train_stage('all', 'demo', {str(ws.root)!r}, steps=40, checkpoint_every=1, progress=False)
""")
    deadline, killed = time.time() + 600, False
    while time.time() < deadline and child.poll() is None:
        if sdir.is_dir() and any(ckpts.TEMP_RE.match(p.name) for p in sdir.iterdir()) \
                and ckpts.list_checkpoints(sdir)[-1:] and ckpts.list_checkpoints(sdir)[-1][0] >= 2:
            os.kill(child.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.005)
    child.communicate(timeout=60)
    if not killed:
        pytest.skip("the training process finished before a save could be caught in progress")
    res = training.train_stage("all", "demo", ws, steps=40, checkpoint_every=1, progress=False)
    assert res.finished and res.start_step >= 2
    assert not [p for p in sdir.iterdir() if ckpts.TEMP_RE.match(p.name)]


# ----------------------------------------------------------------------------- 13: pruning after a fallback
def test_checkpoints_are_still_pruned_after_a_torn_fallback(tiny):
    """keep=3: after the state file is rewritten, CheckpointManager must still delete old ones."""
    import tensorflow as tf

    d, ck = tiny
    tear(d, 15)
    with pytest.warns(ckpts.TornCheckpointWarning):
        assert ckpts.latest_complete(d)[0] == 10
    mgr = tf.train.CheckpointManager(ck, str(d), max_to_keep=3)
    for s in (20, 25, 30):
        mgr.save(checkpoint_number=s)
    assert [s for s, _ in ckpts.list_checkpoints(d)] == [20, 25, 30]


# ----------------------------------------------------------------------------- 9: damaged stage.json
def test_damaged_stage_record_is_a_clear_error_and_touches_nothing(base, heads):
    ws, sdir = _half_trained(base, heads, "bad_record")
    (sdir / training.STAGE_FILE).write_text('{"stage": "heads", "prof')  # a cut write
    before = file_snapshot(sdir)
    with pytest.raises(training.StageRecordError) as e:
        training.train_stage("heads", "demo", ws, progress=False)
    msg = str(e.value)
    assert str(sdir / training.STAGE_FILE) in msg and "Manage versions" in msg and "move" in msg
    status = training.stage_status(ws, "heads")
    assert status.startswith("heads: record damaged") and str(sdir / training.STAGE_FILE) in status
    from helpers.train.stages import StageState, stage_progress

    assert stage_progress(ws, "heads").state is StageState.DAMAGED
    assert file_snapshot(sdir) == before


def test_a_diverging_loss_stops_training_at_once(base):
    """A NaN loss (here: a learning rate that overflows float32) ends the run at that step
    with a message, instead of training on for hours; no checkpoint of that step is written."""
    ws = new_workspace(base, "diverge")
    with pytest.raises(training.TrainingDiverged, match=r"diverged.*lower learning_rate") as err:
        training.train_stage("heads", "demo", ws, steps=40, learning_rate=1e36, warmup_steps=1, progress=False)
    step = int(err.value.args[0].split(" at step ")[1].split()[0])
    assert step < 40
    saved = [s for s, _ in ckpts.list_checkpoints(ws.checkpoints / "heads")]
    assert saved and max(saved) < step


# ----------------------------------------------------------------------------- round 2
def test_a_new_stage_under_another_profile_is_refused_before_anything_is_built(base, heads):
    ws = new_workspace(base, "other_profile", copy_from=heads[0].root)
    shutil.rmtree(ws.checkpoints / "all", ignore_errors=True)  # another test may have trained it there
    before = file_snapshot(ws.checkpoints)
    with pytest.raises(training.cfglib.ConfigError,
                       match=r"stage 'all' continues stage 'heads', which was trained with profile 'demo'.*"
                             r"Use profile='demo'"):
        training.train_stage("all", "cpu", ws, progress=False)
    assert file_snapshot(ws.checkpoints) == before  # no all/stage.json saying "in progress"
    assert training.stage_status(ws, "all") == "all: not started"


def test_a_stage_whose_start_cannot_be_loaded_leaves_no_record(base, tmp_path):
    ws = new_workspace(base, "bad_start")
    bogus = tmp_path / "not-a-checkpoint"
    bogus.write_text("these are not weights")
    with pytest.raises(Exception):
        training.train_stage("heads", "demo", ws, init_checkpoint=str(bogus), progress=False)
    assert not (ws.checkpoints / "heads" / "stage.json").exists()
    assert training.stage_status(ws, "heads") == "heads: not started"


def test_a_workspace_path_with_a_comma_trains(base, tmp_path):
    from helpers.workspace import get_workspace

    ws = get_workspace(tmp_path / "hw3, v2")
    src = new_workspace(base, "comma_source")
    for f in src.shards.iterdir():
        (ws.shards / f.name).write_bytes(f.read_bytes())
    res = training.train_stage("heads", "demo", ws, steps=5, progress=False)
    assert res.finished and res.checkpoint == ws.checkpoints / "heads" / "ckpt-5"


LOCK_HOLDER = """
import sys, time
from helpers.train import stages
with stages.StageLock(sys.argv[1], "heads"):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_a_second_run_of_a_stage_is_refused_and_a_dead_runs_lock_is_taken_over(base, heads):
    import subprocess
    import sys

    from _training_support import REPO
    from helpers.train.stages import StageBusy

    ws, sdir = _half_trained(base, heads, "two_runs")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(ws.root)], env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = file_snapshot(sdir)
        with pytest.raises(StageBusy, match=rf"stage 'heads' is being trained by another run .*pid {holder.pid}"):
            training.train_stage("heads", "demo", ws, progress=False)
        assert file_snapshot(sdir) == before
    finally:
        holder.send_signal(signal.SIGKILL)  # the first run's runtime vanishes, its lock stays behind
    stat = Path(f"/proc/{holder.pid}/stat")
    while stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":  # killed, not yet reaped by its parent
        time.sleep(0.01)
    assert (ws.checkpoints / ".heads.lock").is_file()
    res = training.train_stage("heads", "demo", ws, progress=False)
    holder.wait()
    assert (res.start_step, res.end_step, res.status) == (5, 10, "finished")
    assert not (ws.checkpoints / ".heads.lock").exists()


def test_a_full_disk_during_a_save_names_the_folder_and_keeps_the_checkpoints_before(base, heads, disk):
    """Issue 19, 12: TensorFlow's own error names a temp file (``ckpt-10_temp/part-…``); the user
    is told which folder is full and how much a checkpoint needs, and loses nothing saved."""
    from helpers.atomic import FolderNotWritable
    from helpers.workspace import get_workspace

    half, _ = _half_trained(base, heads, "full_disk_source")
    need = sum(f.stat().st_size for f in (half.checkpoints / "heads").glob("ckpt-5.*"))
    used = sum(f.stat().st_size for f in half.root.rglob("*") if f.is_file())
    mounted = disk((used + 3 * need) / 1e6 * 1.1)
    shutil.copytree(half.root, mounted / "ws")
    ws, sdir = get_workspace(mounted / "ws"), mounted / "ws" / "checkpoints" / "heads"
    mounted.fill(leave=need // 4)  # room for the lock and the logs, not for a checkpoint
    with pytest.raises(FolderNotWritable, match=rf"{sdir} is full \(.* free; this file needs \d+(\.\d)? MB\).*"
                                                "The checkpoints saved before it are kept"):
        training.train_stage("heads", "demo", ws, progress=False)
    assert ckpts.latest_complete(sdir)[0] == 5

    (mounted / "filler").unlink()  # the user frees space and runs the cell again: nothing was lost
    res = training.train_stage("heads", "demo", ws, progress=False)
    assert (res.start_step, res.end_step, res.status) == (5, 10, "finished")
    assert not [p for p in sdir.iterdir() if "_temp" in p.name]
