"""Disconnects, simulated: SIGKILL demo training at random moments, resume, count what was lost.

    python benchmarks/bench_kills.py [--kills 20] [--seed 0] [--workspace DIR]

A Colab runtime dies without warning; the promise is that re-running the training cell resumes
and loses at most ``checkpoint_every`` (5) steps. This kills ``train_stage`` (demo profile, a
separate process) ``--kills`` times: most at a random moment after a random number of steps,
every fourth one while TensorFlow is writing a checkpoint (its ``ckpt-N_temp`` folder exists).
After each kill the next run must resume from a complete checkpoint. It prints, measured in this
run: kills, resumes, kills that hit a save, the most steps lost (target <= 5), and errors
(target 0): a run that failed to start, resumed from nothing, or left a temp folder behind.

    python benchmarks/bench_kills.py --drive [--gpu-pace 1.0] [--copy-seconds S]

``--drive``: the Colab case with the workspace on Drive. Each run trains with its checkpoints on
a fresh, empty local folder (a new runtime after each kill: its local disk is gone) and copies
them in the background to the workspace, which plays Drive: deleted files go to a Trash that
counts (``tests/_fake_drive.py``), each checkpoint copy takes ``--copy-seconds`` (default: the
colab ``all`` stage's Drive copy at 4 MB/s, from ``benchmarks/results/checkpoints_gpu_pace.json``
when ``bench_checkpoints.py --gpu-pace`` saved it, else 25 s) and each step ``--gpu-pace``
seconds. The stage is the demo ``all`` stage (from a 10-step heads stage), whose copies, like
colab's, hold every weight. It prints each kill's steps lost against the stated bound
(``checkpoint_every`` + the steps of two copies), and Drive's live and trashed bytes after each
resume.
"""
from __future__ import annotations

import argparse
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
STEPS = 100_000  # never reached: every run is killed, then the last one stops itself
CHILD = """
import sys
from helpers.train import training
r = training.train_stage('heads', 'demo', sys.argv[1], steps={steps}, stop_at_step=int(sys.argv[2]),
                         checkpoint_every=5, progress=True)
print('RESULT', r.start_step, r.end_step, flush=True)
"""


DRIVE_CHILD = """
import os, sys, time
from pathlib import Path
sys.path.insert(0, os.path.join({repo!r}, "tests"))
from _fake_drive import FakeDrive
from helpers.train import mirror, training

class _Patch:
    setattr = staticmethod(setattr)

FakeDrive(Path(sys.argv[1]), _Patch())  # deleted files go to <workspace>.Trash, as on Drive
real_copy = mirror.copy_file

def drive_copy(src, dst, abandon=None):  # each checkpoint copy lasts {copy_s} s, shared by its files
    t0 = time.perf_counter()
    real_copy(src, dst, abandon=abandon)
    if not Path(src).name.startswith("ckpt-"):
        return  # stage.json, event files: small
    prefix = Path(src).name.split(".")[0]
    total = sum(f.stat().st_size for f in Path(src).parent.glob(prefix + ".*"))
    time.sleep(max(0.0, {copy_s} * Path(src).stat().st_size / max(total, 1) - (time.perf_counter() - t0)))

mirror.copy_file = drive_copy
real_mirror = mirror.CheckpointMirror.mirror_newest

def told(self, *a, **kw):
    c = real_mirror(self, *a, **kw)
    if c is not None:
        print("COPIED", c.step, c.nbytes, round(c.seconds, 2), flush=True)
    return c

mirror.CheckpointMirror.mirror_newest = told

class Paced(training.StageProgress):  # a GPU's step: the real step, then the rest of {pace} s
    def __call__(self, output):
        end = getattr(self, "_end", time.perf_counter())
        time.sleep(max(0.0, {pace} - (time.perf_counter() - end)))
        try:
            return super().__call__(output)
        finally:
            self._end = time.perf_counter()

training.StageProgress = Paced
r = training.train_stage('all', 'demo', sys.argv[1], steps={steps}, stop_at_step=int(sys.argv[2]),
                         checkpoint_every=5, progress=True, local_checkpoints=sys.argv[3])
print('RESULT', r.start_step, r.end_step, flush=True)
"""


def _child(ws: Path, stop_at: int, drive: dict | None = None, local: Path | None = None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    code = (DRIVE_CHILD.format(repo=str(REPO), steps=STEPS, **drive) if drive
            else CHILD.format(steps=STEPS))
    args = [str(ws), str(stop_at)] + ([str(local)] if drive else [])
    return subprocess.Popen([sys.executable, "-c", code, *args],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _drive_bytes(ws: Path) -> tuple[int, int]:
    """(live, trashed) bytes of the workspace playing Drive: the `all` stage's folder, and the Trash."""
    live = sum(f.stat().st_size for f in (ws / "checkpoints" / "all").rglob("*") if f.is_file())
    trash = ws.with_name(ws.name + ".Trash")
    return live, sum(f.stat().st_size for f in trash.rglob("*") if f.is_file()) if trash.is_dir() else 0


def _read_into(stream, buf: list[str]) -> None:
    """Collect a child's output as it comes (the progress bar redraws with \r, no newline)."""
    while chunk := os.read(stream.fileno(), 65536):
        buf.append(chunk.decode(errors="replace"))


def _steps_seen(text: str) -> int:
    """The last step the progress bar showed (``N/100000``)."""
    found = re.findall(rf"(\d+)/{STEPS}", text)
    return int(found[-1]) if found else -1


def run(ws: Path, kills: int, seed: int, drive: dict | None = None) -> dict:
    import math
    import shutil
    import threading

    from helpers.train import checkpoints as ckpts
    from helpers.train import mirror

    rng = random.Random(seed)
    stage = "all" if drive else "heads"
    sdir = ws / "checkpoints" / stage
    resumed_re = re.compile(rf"resuming stage '{stage}' from ckpt-(\d+)")
    out = {"kills": 0, "resumes": 0, "in_save": 0, "lost": [], "errors": [], "bounds": [], "drive": []}
    reached = 0
    for k in range(kills + 1):
        last = k == kills
        local = ws.parent / f"{ws.name}-local-{k}" if drive else None  # a new runtime: an empty local disk
        child = _child(ws, reached + 12 if last else STEPS, drive, local)
        # where TensorFlow writes its checkpoints: the runtime's local folder, or the workspace
        saves_in = (mirror.local_checkpoint_root(ws, local) / stage) if drive else sdir
        buf: list[str] = []
        reader = threading.Thread(target=_read_into, args=(child.stdout, buf), daemon=True)
        reader.start()
        in_save = (k % 4 == 3) and not last
        target = rng.randint(1, 40 if drive else 12)  # steps of this run before the kill
        start = None
        t0 = time.time()
        while child.poll() is None and time.time() - t0 < 900 and not last:
            text = "".join(buf)
            m = resumed_re.search(text)
            if m and start is None:
                start = int(m.group(1))
            seen = _steps_seen(text)
            if seen >= 0 and start is None and k == 0:
                start = 0
            if start is not None and seen - start >= target:
                if not in_save or (saves_in.is_dir() and any(ckpts.TEMP_RE.match(p.name) for p in saves_in.iterdir())):
                    if in_save:
                        out["in_save"] += 1
                    os.kill(child.pid, signal.SIGKILL)
                    break
            time.sleep(0.005)
        child.wait(timeout=900)
        reader.join(timeout=10)
        text = "".join(buf)
        if drive:
            copies = [float(x) for x in re.findall(r"COPIED \d+ \d+ ([\d.]+)", text)]
            if copies:
                out["copy_s"] = max(out.get("copy_s", 0.0), max(copies))
        if k > 0:
            m = resumed_re.search(text)
            if not m:
                out["errors"].append(f"run {k}: did not resume ({text.strip().splitlines()[-1:] or 'no output'})")
            else:
                out["resumes"] += 1
                out["lost"].append(reached - int(m.group(1)))
                if drive:
                    out["drive"].append(_drive_bytes(ws))
        if last:
            if "RESULT" not in text:
                out["errors"].append(f"final run failed: {text[-500:]}")
        else:
            out["kills"] += 1
            reached = max(reached, _steps_seen(text))
        leftovers = [p.name for p in sdir.iterdir() if ckpts.TEMP_RE.match(p.name)] if (last and sdir.is_dir()) else []
        if leftovers:
            out["errors"].append(f"temp folders left after the final run: {leftovers}")
        note = ""
        if drive and k > 0 and out["lost"]:
            bound = 5 + math.ceil(2 * out.get("copy_s", drive["copy_s"]) / drive["pace"])
            out["bounds"].append(bound)
            live, trash = out["drive"][-1] if out["drive"] else (0, 0)
            note = (f"; resumed after losing {out['lost'][-1]} steps (bound {bound}: 5 + two copies); "
                    f"Drive {live / 1e6:.1f} MB live, {trash / 1e6:.3f} MB in the Trash")
        print(f"run {k}: {'killed' if not last else 'final'} at step {reached}"
              + (" (during a save)" if in_save and not last else "") + note, flush=True)
        if local is not None:
            shutil.rmtree(local, ignore_errors=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workspace", type=Path, help="a fresh folder (default: a temp folder)")
    ap.add_argument("--drive", action="store_true", help="the workspace plays Drive: a new runtime after each kill")
    ap.add_argument("--gpu-pace", type=float, default=1.0, help="--drive: seconds per step (a GPU's pace)")
    ap.add_argument("--copy-seconds", type=float, default=None, help="--drive: seconds per checkpoint copy")
    args = ap.parse_args(argv)
    ws = args.workspace or Path(tempfile.mkdtemp(prefix="bench-kills-"))
    from helpers.data.demo_data import make_demo_dataset
    from helpers.data.manifest import read_manifest
    from helpers.data.shards import write_shards
    from helpers.workspace import get_workspace

    w = get_workspace(ws)
    data = make_demo_dataset(w.data / "demo", seed=0)
    write_shards(data, read_manifest(data / "data_manifest.csv"), w.shards, progress=False, verbose=False)
    drive = None
    if args.drive:
        drive = {"pace": args.gpu_pace, "copy_s": args.copy_seconds or _colab_copy_seconds()}
        print(f"--drive: {args.gpu_pace} s/step, {drive['copy_s']:.1f} s per checkpoint copy to the Drive-like "
              "workspace, an empty local folder after each kill", flush=True)
        from helpers.train.training import train_stage

        train_stage("heads", "demo", w.root, progress=False)  # `all` starts from it
    t0 = time.time()
    r = run(w.root, args.kills, args.seed, drive)
    target = f"bound {max(r['bounds'] or [0])}" if drive else "target <= 5"
    over = sum(lost > b for lost, b in zip(r["lost"], r["bounds"])) if drive else 0
    print(f"kills {r['kills']} (during a save: {r['in_save']}), resumes {r['resumes']}, "
          f"most steps lost {max(r['lost'] or [0])} ({target}"
          + (f"; over the bound: {over}" if drive else "") + f"), errors {len(r['errors'])} (target 0); "
          f"{(time.time() - t0) / 60:.1f} min")
    if drive and r["drive"]:
        print(f"Drive after each resume: at most {max(lv for lv, _ in r['drive']) / 1e6:.1f} MB live, "
              f"{max(tr for _, tr in r['drive']) / 1e6:.3f} MB in the Trash; copies took up to "
              f"{r.get('copy_s', 0):.1f} s")
    for e in r["errors"]:
        print("  error:", e)
    return 0 if not r["errors"] else 1


def _colab_copy_seconds() -> float:
    """The colab `all` stage's Drive copy at 4 MB/s, as bench_checkpoints.py --gpu-pace measured it."""
    import json

    saved = REPO / "benchmarks" / "results" / "checkpoints_gpu_pace.json"
    try:
        rows = json.loads(saved.read_text())["table1"]
        row = next(r for r in rows if (r["profile"], r["stage"]) == ("colab", "all"))
        return row["compact"] / 1e6 / row["rate_mbps"]
    except (OSError, ValueError, KeyError, StopIteration):
        return 25.0


if __name__ == "__main__":
    sys.exit(main())
