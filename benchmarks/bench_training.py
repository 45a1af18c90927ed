"""Training benchmarks (prints figures; asserts nothing).

    python benchmarks/bench_training.py            # demo figures (a few minutes on 2 cores)
    python benchmarks/bench_training.py --big      # + colab and cpu profiles' s/step on CPU (slow)

Prints, from one run:
  * s/step of the demo profile;
  * checkpointing every 5 steps vs only at the end (ratio of s/step; target <= 1.10);
  * our stage runner vs a bare Model Garden ``train_lib.run_experiment`` on the same
    config (ratio of s/step; target <= 1.05);
  * with --big: s/step of the ``cpu`` and ``colab`` profiles on this CPU, over a few
    steps after warm-up, on synthetic 1000x1000 images (from scratch: no downloads).

s/step excludes the first step (tf.function tracing) and includes the checkpoint
saves made between steps.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_shards(root: Path, size: int, n_train: int) -> Path:
    from helpers.data.demo_data import make_demo_dataset
    from helpers.data.manifest import read_manifest
    from helpers.data.shards import write_shards

    data = make_demo_dataset(root / f"data{size}", seed=0, n_train=n_train, n_test=0, size=size)
    rows = read_manifest(data / "data_manifest.csv")
    for r in rows:  # benchmark: train on every image
        if r["split"] == "val":
            r["split"] = "train"
    out = root / f"shards{size}"
    write_shards(data, rows, out, progress=False, verbose=False)
    return out


def workspace_with(root: Path, name: str, shards: Path):
    import shutil

    from helpers.workspace import get_workspace

    ws = get_workspace(root / name)
    for f in shards.iterdir():
        shutil.copy2(f, ws.shards / f.name)
    return ws


def ours(ws, profile, steps, stage="heads", **kw):
    from helpers.train.training import train_stage

    if stage == "heads":
        kw["from_scratch"] = True  # no downloads in a benchmark
    r = train_stage(stage, profile, ws, steps=steps, progress=False, **kw)
    return r.s_per_step


def bare(ws, profile, steps):
    """Model Garden's run_experiment on exactly the config our runner builds."""
    import tensorflow as tf
    from official.core import train_lib

    from helpers.train.training import build_task, plan_stage

    _, cfg, _ = plan_stage("heads", profile, ws, steps=steps)
    model_dir = str(ws.root / "bare")
    times = []
    task = build_task(cfg, model_dir)  # the same task (window decoder) as ours
    strategy = tf.distribute.get_strategy()
    t = [time.perf_counter()]

    def timer(_output):
        now = time.perf_counter()
        times.append(now - t[0])
        t[0] = now

    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()):
        train_lib.run_experiment(distribution_strategy=strategy, task=task, mode="train",
                                 params=cfg, model_dir=model_dir, train_actions=[timer])
    return sum(times[1:]) / len(times[1:])


def demo_figures(root: Path, n: int, repeats: int) -> None:
    shards = make_shards(root, 256, 6)
    runs = {
        "demo s/step (ckpt every 5)": lambda name: ours(workspace_with(root, name, shards), "demo", n),
        "demo s/step (ckpt at end only)": lambda name: ours(workspace_with(root, name, shards), "demo", n,
                                                          checkpoint_every=10 ** 6),
        "bare run_experiment s/step (ckpt every 5)": lambda name: bare(workspace_with(root, name, shards),
                                                                      "demo", n),
    }
    # alternate the three configurations and take the median: the machine is shared
    res = {k: [] for k in runs}
    for rep in range(repeats):
        for i, (k, fn) in enumerate(runs.items()):
            res[k].append(fn(f"r{rep}-{i}"))
    med = {k: statistics.median(v) for k, v in res.items()}
    print(f"\ndemo profile, {n} steps per run, {repeats} alternating runs each; median s/step "
          "(excludes the first, tracing, step)")
    for k, v in med.items():
        print(f"  {k:45s} {v:.3f}   runs: {', '.join(f'{x:.3f}' for x in res[k])}")
    r1 = med["demo s/step (ckpt every 5)"] / med["demo s/step (ckpt at end only)"]
    r2 = med["demo s/step (ckpt every 5)"] / med["bare run_experiment s/step (ckpt every 5)"]
    print(f"  checkpoint every 5 / only at end              {r1:.3f}  (target <= 1.10)")
    print(f"  our runner / bare run_experiment              {r2:.3f}  (target <= 1.05)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40, help="demo steps per measured run")
    ap.add_argument("--repeats", type=int, default=2, help="alternating runs per configuration")
    ap.add_argument("--big", action="store_true", help="also time the cpu and colab profiles")
    ap.add_argument("--big-steps", type=int, default=4)
    ap.add_argument("--only-big", action="store_true", help="skip the demo figures")
    ap.add_argument("--big-ckpt", type=int, default=0, metavar="STEPS",
                    help="also: cpu profile, checkpoint every 5 vs only at end, over STEPS steps")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench_training.") as tmp:
        root = Path(tmp)
        n = args.steps
        if not args.only_big:
            demo_figures(root, n, args.repeats)
        if (args.big or args.only_big) and args.big_steps > 0:
            big = make_shards(root, 1000, 2)
            print(f"\nbig profiles on this CPU, {args.big_steps} steps, from scratch, synthetic 1000 px images")
            for prof, stage in (("cpu", "heads"), ("cpu", "all"), ("colab", "heads")):
                t0 = time.perf_counter()
                ws = workspace_with(root, prof, big)  # `all` continues the heads run just made
                sps = ours(ws, prof, args.big_steps, stage=stage)
                import resource
                rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
                print(f"  {prof:6s} {stage:6s} {sps:.1f} s/step (whole call {time.perf_counter() - t0:.0f} s, "
                      f"peak RSS so far {rss:.1f} GB)", flush=True)

        if args.big_ckpt:
            big = make_shards(root, 1000, 2)  # skips shards already written
            every5 = ours(workspace_with(root, "cpu-every5", big), "cpu", args.big_ckpt)
            at_end = ours(workspace_with(root, "cpu-at-end", big), "cpu", args.big_ckpt,
                          checkpoint_every=10 ** 6)
            print(f"\ncpu profile, {args.big_ckpt} steps: ckpt every 5 {every5:.2f} s/step, only at end "
                  f"{at_end:.2f} s/step, ratio {every5 / at_end:.3f} (target <= 1.10)")


if __name__ == "__main__":
    main()
