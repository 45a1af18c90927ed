"""Disconnects, simulated: SIGKILL demo training at random moments, resume, count what was lost.

    python benchmarks/bench_kills.py [--kills 20] [--seed 0] [--workspace DIR]

A Colab runtime dies without warning; the promise is that re-running the training cell resumes
and loses at most ``checkpoint_every`` (5) steps. This kills ``train_stage`` (demo profile, a
separate process) ``--kills`` times: most at a random moment after a random number of steps,
every fourth one while TensorFlow is writing a checkpoint (its ``ckpt-N_temp`` folder exists).
After each kill the next run must resume from a complete checkpoint. It prints, measured in this
run: kills, resumes, kills that hit a save, the most steps lost (target <= 5), and errors
(target 0): a run that failed to start, resumed from nothing, or left a temp folder behind.
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


def _child(ws: Path, stop_at: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-c", CHILD.format(steps=STEPS), str(ws), str(stop_at)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _read_into(stream, buf: list[str]) -> None:
    """Collect a child's output as it comes (the progress bar redraws with \r, no newline)."""
    while chunk := os.read(stream.fileno(), 65536):
        buf.append(chunk.decode(errors="replace"))


def _steps_seen(text: str) -> int:
    """The last step the progress bar showed (``N/100000``)."""
    found = re.findall(rf"(\d+)/{STEPS}", text)
    return int(found[-1]) if found else -1


def run(ws: Path, kills: int, seed: int) -> dict:
    import threading

    from helpers.train import checkpoints as ckpts

    rng = random.Random(seed)
    sdir = ws / "checkpoints" / "heads"
    out = {"kills": 0, "resumes": 0, "in_save": 0, "lost": [], "errors": []}
    reached = 0
    for k in range(kills + 1):
        last = k == kills
        child = _child(ws, reached + 12 if last else STEPS)
        buf: list[str] = []
        reader = threading.Thread(target=_read_into, args=(child.stdout, buf), daemon=True)
        reader.start()
        in_save = (k % 4 == 3) and not last
        target = rng.randint(1, 12)  # steps of this run before the kill
        start = None
        t0 = time.time()
        while child.poll() is None and time.time() - t0 < 900 and not last:
            text = "".join(buf)
            m = re.search(r"resuming stage 'heads' from ckpt-(\d+)", text)
            if m and start is None:
                start = int(m.group(1))
            seen = _steps_seen(text)
            if seen >= 0 and start is None and k == 0:
                start = 0
            if start is not None and seen - start >= target:
                if not in_save or (sdir.is_dir() and any(ckpts.TEMP_RE.match(p.name) for p in sdir.iterdir())):
                    if in_save:
                        out["in_save"] += 1
                    os.kill(child.pid, signal.SIGKILL)
                    break
            time.sleep(0.005)
        child.wait(timeout=900)
        reader.join(timeout=10)
        text = "".join(buf)
        if k > 0:
            m = re.search(r"resuming stage 'heads' from ckpt-(\d+)", text)
            if not m:
                out["errors"].append(f"run {k}: did not resume ({text.strip().splitlines()[-1:] or 'no output'})")
            else:
                out["resumes"] += 1
                out["lost"].append(reached - int(m.group(1)))
        if last:
            if "RESULT" not in text:
                out["errors"].append(f"final run failed: {text[-500:]}")
        else:
            out["kills"] += 1
            reached = max(reached, _steps_seen(text))
        leftovers = [p.name for p in sdir.iterdir() if ckpts.TEMP_RE.match(p.name)] if (last and sdir.is_dir()) else []
        if leftovers:
            out["errors"].append(f"temp folders left after the final run: {leftovers}")
        print(f"run {k}: {'killed' if not last else 'final'} at step {reached}"
              + (" (during a save)" if in_save and not last else ""), flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workspace", type=Path, help="a fresh folder (default: a temp folder)")
    args = ap.parse_args(argv)
    ws = args.workspace or Path(tempfile.mkdtemp(prefix="bench-kills-"))
    from helpers.data.demo_data import make_demo_dataset
    from helpers.data.manifest import read_manifest
    from helpers.data.shards import write_shards
    from helpers.workspace import get_workspace

    w = get_workspace(ws)
    data = make_demo_dataset(w.data / "demo", seed=0)
    write_shards(data, read_manifest(data / "data_manifest.csv"), w.shards, progress=False, verbose=False)
    t0 = time.time()
    r = run(w.root, args.kills, args.seed)
    print(f"kills {r['kills']} (during a save: {r['in_save']}), resumes {r['resumes']}, "
          f"most steps lost {max(r['lost'] or [0])} (target <= 5), errors {len(r['errors'])} (target 0); "
          f"{(time.time() - t0) / 60:.1f} min")
    for e in r["errors"]:
        print("  error:", e)
    return 0 if not r["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
