"""Checkpoint cost with the workspace on a Drive-like slow folder (a benchmark: prints, asserts nothing).

    python benchmarks/bench_checkpoints.py --profile demo    # smoke run, a few minutes
    python benchmarks/bench_checkpoints.py                   # cpu profile, `all` stage (1-2 h on 2 cores)
    python benchmarks/bench_checkpoints.py --sizes-only      # checkpoint size per profile and stage
    python benchmarks/bench_checkpoints.py --gpu-pace 1.0    # at a GPU's pace: benchmarks/gpu_pace.py (~35 min)

The workspace lives in a slow folder: a FUSE passthrough whose writes are held to
``--rate-mbps`` (``benchmarks/slowfs.py``). Where FUSE cannot mount, the benchmark says so and
falls back to a simulation: ``helpers.train.mirror.copy_file`` sleeps bytes/rate after each copy,
and saving straight into the workspace is charged the measured checkpoint bytes / rate.

Three configurations of the profile's ``all`` stage (from a 1-step ``heads`` stage), run
alternately (a b c a b c ...: the machine is shared, so each ratio compares neighbours):

  a  no checkpoints during the run (checkpoint_every larger than the run)
  b  a checkpoint every 5 steps on local disk, mirrored to the slow folder in the background
     (``local_checkpoints=<local folder>``: helpers.train.mirror, the new design)
  c  a checkpoint every 5 steps saved straight into the slow folder (``local_checkpoints=False``)

s/step is the stage runner's own figure: the mean over the run's steps except the first
(tf.function tracing); it includes the saves made between steps, not the save at step 0 nor the
one at completion (nor, for b, the wait for the last copy, printed separately as "end wait").
Targets: b/a <= 1.10. For b, each background copy is printed with its bytes, seconds and lag
(how many steps training was past the copied checkpoint when the copy ended), and the final
checkpoint in the slow folder is read back in full (helpers.train.checkpoints.check_checkpoint).

Then the checkpoint size of each profile (demo, cpu, colab) and stage (heads, all): the model
built from the real config (helpers.train.configs.nuclei_maskrcnn.experiment_config, the task's build_model, the
optimizer from the config with its slot variables created) saved as one checkpoint with the
items Model Garden's trainer saves (global_step, model, optimizer).

Measured here (2 shared cores, other jobs running; FUSE throttle at 4 MB/s; 20 timed steps):
  cpu `all`:  a 35.4 / 30.7 s/step, b 40.2 / 30.4, c 65.4 (one run); b/a 1.134 and 0.993
              (median 1.06), c/a 1.85. A local save of 363 MB took 1.3-1.5 s (b), a save into
              the slow folder 91.3 s (c); background copies 90.7-91.4 s, Drive 1-4 steps behind
              at the end of each; end wait for the last copy 92-142 s; final checkpoint complete.
              (The steps were 4x slower than on an idle machine, so c/a is smaller than the
              1 + 91/(5 x 7.5) = 3.4 expected at 7.5 s/step; b's cost stays ~1.4 s per 5 steps.)
  demo `all`: b/a 1.46 (a 91 MB save every 5 steps of 0.4 s: 0.7 s each on local disk), c/a 12.6.
  sizes (MB): demo heads 46.4 / all 91.1, cpu 268.8 / 362.8, colab 345.0 / 515.1; the table
              matches the checkpoints the runs wrote (cpu heads 268.7, cpu all 362.8, demo all 91.1).
  Wall time: demo mode ~15 min; cpu mode ~100 min on the loaded machine (30-40 s per step).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

# Google Drive through a FUSE mount writes at "on the order of 3-5MB/s" (UCI HPC's guide to
# Google Drive, whose FUSE mount is the same kind of access as Colab's /content/drive). No
# Colab-specific measured write rate was found: Colab's tracker has only reports without
# figures ("extremely low read/write speed", googlecolab/colabtools#1096) and a worst case of
# 20 KB/s (googlecolab/colabtools#5952). Colab's team says Drive writes go first to the VM's
# disk and upload later (googlecolab/colabtools#659), so a plain write can be faster than the
# upload; holding every write to the upload rate is the pessimistic case for saving to Drive.
DRIVE_RATE_MBPS = 4.0
DRIVE_RATE_SOURCE = ("Google Drive FUSE mount 'on the order of 3-5MB/s', "
                     "http://moo.nac.uci.edu/~hjm/HOWTO-rclone-to-Gdrive.html (midpoint 4 MB/s); "
                     "no Colab-specific figure found (googlecolab/colabtools#1096: no numbers; "
                     "#5952: 20 KB/s at worst)")
PROFILE_DATA = {"cpu": (1000, 2), "demo": (256, 6), "colab": (1000, 2)}  # image px, images
CONFIGS = {
    "a": "no checkpoints (checkpoint_every > run)",
    "b": "every 5, local disk + background mirror",
    "c": "every 5, straight into the slow folder",
}
RESULT_TAG = "BENCH_RESULT "


# ============================================================================ worker side

def _worker(spec: dict) -> dict:
    """One measured run (or one heads stage, or one checkpoint size) in this process."""
    kind = spec["kind"]
    if kind == "size":
        return checkpoint_size(spec["profile"], spec["stage"], Path(spec["tmp"]))
    if kind == "pace_size":
        import gpu_pace

        return gpu_pace.blocking_and_sizes(spec["profile"], spec["stage"], Path(spec["tmp"]), spec["rate_mbps"])
    from helpers.train.training import train_stage

    if kind == "heads":
        r = train_stage("heads", spec["profile"], spec["workspace"], steps=1, from_scratch=True,
                        progress=False, local_checkpoints=False)
        return {"end_step": r.end_step, "checkpoint": str(r.checkpoint),
                "bytes": _prefix_bytes(r.checkpoint)}
    return _measured_run(spec)


def _prefix_bytes(prefix) -> int:
    from helpers.train import mirror

    return sum(f.stat().st_size for f in mirror.checkpoint_files(Path(prefix)))


def _measured_run(spec: dict) -> dict:
    """train_stage('all') with hooks that time every step, save and background copy."""
    import tensorflow as tf

    from helpers.train import checkpoints as ckpts
    from helpers.train import mirror, training

    steps_at: list[tuple[float, int]] = []   # (time, global step) after each step
    saves: list[dict] = []
    copies: list[dict] = []
    ends: list[float] = []
    now_step = [0]

    pace = spec.get("pace_s")

    class Timed(training.StageProgress):
        def __init__(self, stage, start, *a, **kw):
            super().__init__(stage, start, *a, **kw)
            now_step[0] = start
            self._start = start
            self._end = time.perf_counter()

        def __call__(self, output):
            if pace:  # a GPU's step: the real (faster) step, then the rest of `pace` seconds;
                # it began when the last action or the save after it returned (a save holds the GPU)
                began = max(self._end, saves[-1]["t"] if saves else 0.0)
                time.sleep(max(0.0, pace - (time.perf_counter() - began)))
            now_step[0] = self._start + len(self.times) + 1
            steps_at.append((time.perf_counter(), now_step[0]))
            try:
                return super().__call__(output)
            finally:
                self._end = time.perf_counter()

    training.StageProgress = Timed

    orig_save = tf.train.CheckpointManager.save

    def timed_save(self, *a, **kw):
        t0 = time.perf_counter()
        path = orig_save(self, *a, **kw)
        if path is not None:  # the seconds the training thread was held (the files may still be being written)
            saves.append({"step": ckpts.checkpoint_step(Path(path)), "seconds": time.perf_counter() - t0,
                          "path": str(path), "t": time.perf_counter()})
        return path

    tf.train.CheckpointManager.save = timed_save

    orig_mirror = mirror.CheckpointMirror.mirror_newest

    def timed_mirror(self, *a, **kw):
        started, t0 = now_step[0], time.perf_counter()
        copy = orig_mirror(self, *a, **kw)
        if copy is not None:
            copies.append({"step": copy.step, "bytes": copy.nbytes, "seconds": copy.seconds,
                           "started_at": started, "ended_at": now_step[0],
                           "t0": t0, "t1": time.perf_counter()})
        return copy

    mirror.CheckpointMirror.mirror_newest = timed_mirror

    orig_close = mirror.CheckpointMirror.close

    def timed_close(self, *a, **kw):
        t0 = time.perf_counter()
        try:
            return orig_close(self, *a, **kw)
        finally:
            ends.append(time.perf_counter() - t0)

    mirror.CheckpointMirror.close = timed_close

    rate = spec.get("simulate_rate_mbps")
    if rate:  # no FUSE here: slow the mirror's copies to the same rate instead
        orig_copy = mirror.copy_file

        def slow_copy(src, dst, abandon=None):
            t0 = time.perf_counter()
            orig_copy(src, dst, abandon=abandon)
            wait = Path(dst).stat().st_size / (rate * 1e6) - (time.perf_counter() - t0)
            if wait > 0:
                time.sleep(wait)

        mirror.copy_file = slow_copy

    drive = None
    if spec.get("fake_drive"):  # deleted files go to a Trash that counts, as on Drive
        sys.path.insert(0, str(HERE.parent / "tests"))
        from _fake_drive import FakeDrive

        class _Patch:
            setattr = staticmethod(setattr)

        drive = FakeDrive(Path(spec["workspace"]), _Patch())

    import resource

    t0 = time.perf_counter()
    r = training.train_stage("all", spec["profile"], spec["workspace"], steps=spec["steps"],
                             progress=False, local_checkpoints=spec["local"] or False,
                             checkpoint_every=spec["every"])
    wall = time.perf_counter() - t0
    sizes = {}
    for sv in saves:  # written by now; the oldest may be deleted already (max_to_keep)
        p = Path(sv.pop("path"))
        if p.with_name(p.name + ".index").is_file():
            sizes[sv["step"]] = _prefix_bytes(p)
    for sv in saves:
        sv["bytes"] = sizes.get(sv["step"], max(sizes.values(), default=0))
    t1 = time.perf_counter()
    problem = ckpts.check_checkpoint(r.checkpoint, deep=True) if r.checkpoint else "no checkpoint"
    check_s = time.perf_counter() - t1
    return {
        "s_per_step": r.s_per_step, "wall": wall, "end_step": r.end_step,
        "planned": r.planned_steps, "status": r.status, "final": str(r.checkpoint),
        "final_problem": problem, "check_s": check_s,
        "final_bytes": _prefix_bytes(r.checkpoint) if r.checkpoint else 0,
        "saves": saves, "copies": copies, "end_wait": ends[-1] if ends else 0.0,
        "step_times": [b[0] - a[0] for a, b in zip(steps_at, steps_at[1:])],
        "steps_at": steps_at,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
        "drive_live": (sum(f.stat().st_size for f in (Path(spec["workspace"]) / "checkpoints" / "all").rglob("*")
                           if f.is_file()) if drive else None),
        "drive_trash": drive.trash_bytes if drive else None,
    }


def trainer_items(profile: str, stage: str, tmp: Path):
    """``(cfg, items)``: the items Model Garden's trainer checkpoints (global_step, model,
    optimizer with its slot variables), built from the real config of ``profile``/``stage``."""
    import tensorflow as tf
    from official.modeling import performance

    from helpers.train.configs import nuclei_maskrcnn as experiment
    from helpers.train.training import build_task

    cfg = experiment.experiment_config(profile, stage, ["unused.tfrecord"], accelerator="cpu")
    performance.set_mixed_precision_policy(tf.dtypes.as_dtype(cfg.runtime.mixed_precision_dtype))
    task = build_task(cfg, tmp)
    model = task.build_model()
    opt = task.create_optimizer(cfg.trainer.optimizer_config, cfg.runtime)
    trainable = model.trainable_variables
    if hasattr(opt, "build"):
        opt.build(trainable)            # slot variables (SGD momentum), as the first step makes them
    else:                               # legacy Keras optimizer
        opt._create_all_weights(trainable)
    return cfg, dict(global_step=tf.Variable(0, dtype=tf.int64), model=model, optimizer=opt)


def checkpoint_size(profile: str, stage: str, tmp: Path) -> dict:
    """Bytes of one checkpoint of ``profile``/``stage`` as Model Garden's trainer writes it."""
    import tensorflow as tf

    from helpers.train import config as cfglib

    t0 = time.perf_counter()
    _, items = trainer_items(profile, stage, tmp)
    model = items["model"]
    trainable = model.trainable_variables
    ckpt = tf.train.Checkpoint(**items)
    prefix = ckpt.write(str(tmp / f"{profile}-{stage}" / "ckpt-0"))
    n_model = sum(int(v.shape.num_elements()) for v in model.variables)
    n_train = sum(int(v.shape.num_elements()) for v in trainable)
    out = {"profile": profile, "stage": stage, "bytes": _prefix_bytes(prefix),
           "model_params": n_model, "trainable_params": n_train,
           "backbone": cfglib.get_profile(profile).backbone, "seconds": time.perf_counter() - t0}
    shutil.rmtree(Path(prefix).parent, ignore_errors=True)
    return out


# ============================================================================ parent side

def run_worker(spec: dict, log_dir: Path, name: str) -> dict:
    """Run one spec in a fresh Python (no TensorFlow state or memory carried between runs)."""
    log = log_dir / f"{name}.log"
    with open(log, "w") as out:
        p = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
                           stdout=subprocess.PIPE, stderr=out, text=True)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith(RESULT_TAG)]
    if p.returncode != 0 or not lines:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"worker {name} failed (exit {p.returncode}); stdout tail:\n"
                           f"{p.stdout[-1500:]}\nstderr tail ({log}):\n{tail}")
    return json.loads(lines[-1][len(RESULT_TAG):])


def print_sizes(profiles, root: Path) -> dict:
    print("\ncheckpoint size per profile and stage (model from the real config + optimizer slots, "
          "saved once; float32 variables)", flush=True)
    print(f"  {'profile':8s}{'backbone':11s}{'stage':7s}{'MB':>9s}{'model params':>14s}"
          f"{'trainable':>12s}{'build+save s':>14s}")
    sizes = {}
    for prof in profiles:
        for stage in ("heads", "all"):
            try:
                s = run_worker({"kind": "size", "profile": prof, "stage": stage, "tmp": str(root / "sizes")},
                               root / "logs", f"size-{prof}-{stage}")
            except RuntimeError as e:
                print(f"  {prof:8s}{'':11s}{stage:7s}  failed: {str(e).splitlines()[0]}", flush=True)
                continue
            sizes[(prof, stage)] = s["bytes"]
            print(f"  {prof:8s}{s['backbone']:11s}{stage:7s}{s['bytes'] / 1e6:9.1f}{s['model_params'] / 1e6:13.1f}M"
                  f"{s['trainable_params'] / 1e6:11.1f}M{s['seconds']:14.0f}", flush=True)
    return sizes


def _line(cfg: str, rep: int, r: dict) -> str:
    saves = [s for s in r["saves"] if 1 <= s["step"] < r["end_step"]]
    save_txt = (f"; saves in the timed steps: {len(saves)} x {statistics.mean(s['seconds'] for s in saves):.1f} s"
                if saves else "")
    return (f"  [{cfg}] run {rep + 1}: {r['s_per_step']:.3f} s/step over {len(r['step_times'])} steps, "
            f"whole call {r['wall']:.0f} s{save_txt}; peak RSS {r['peak_rss_gb']:.1f} GB")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu", choices=("cpu", "demo", "colab"))
    ap.add_argument("--steps", type=int, default=20, help="timed steps per run (the first, tracing, step comes on top)")
    ap.add_argument("--repeats", type=int, default=2, help="alternating runs per configuration")
    ap.add_argument("--every", type=int, default=5, help="checkpoint every N steps in b and c")
    ap.add_argument("--rate-mbps", type=float, default=DRIVE_RATE_MBPS,
                    help=f"write rate of the slow folder, MB/s (default {DRIVE_RATE_MBPS}: {DRIVE_RATE_SOURCE})")
    ap.add_argument("--simulate", action="store_true", help="do not try FUSE; slow copies in-process instead")
    ap.add_argument("--sizes", default="demo,cpu,colab", help="profiles for the size table ('' for none)")
    ap.add_argument("--sizes-only", action="store_true")
    ap.add_argument("--configs", default="abc", help="which of a, b, c to run")
    ap.add_argument("--tmp", default=None, help="local-disk folder for the run (default: system temp)")
    ap.add_argument("--keep", action="store_true", help="keep the temp folder")
    ap.add_argument("--gpu-pace", type=float, default=None, metavar="S",
                    help="hold each step to S seconds (a GPU's pace) on the demo profile: see benchmarks/gpu_pace.py")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        spec = json.loads(args.worker)
        res = _worker(spec)
        print(RESULT_TAG + json.dumps(res, default=str), flush=True)
        if spec["kind"] == "run":  # kept beside the worker logs for a closer look
            ws = Path(spec["workspace"])
            with open(ws.parents[1] / "logs" / f"{ws.name}.json", "w") as f:
                json.dump(res, f, default=str)
        return

    root = Path(tempfile.mkdtemp(prefix="bench_checkpoints.", dir=args.tmp))
    (root / "logs").mkdir()
    print(f"bench_checkpoints: profile {args.profile}, work folder {root} (worker logs in {root / 'logs'})",
          flush=True)
    try:
        if args.gpu_pace:
            return _gpu_pace(args, root)
        sizes, sizes_real = {}, None
        if not args.sizes_only:
            sizes_real = _timing(args, root)
        if args.sizes:
            sizes = print_sizes([p for p in args.sizes.split(",") if p], root)
        if not args.sizes_only and sizes_real and (args.profile, "all") in sizes:
            est = sizes[(args.profile, "all")]
            print(f"  cross-check: the measured runs' {args.profile} `all` checkpoint is "
                  f"{sizes_real / 1e6:.1f} MB, the size table says {est / 1e6:.1f} MB")
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def _timing(args, root: Path) -> int | None:
    """The a/b/c comparison; returns the bytes of the final `all` checkpoint."""
    import contextlib

    from bench_training import make_shards, workspace_with

    import slowfs

    rate = args.rate_mbps
    backing, mnt, local = root / "drive-backing", root / "drive", root / "local"
    why = "--simulate given" if args.simulate else slowfs.why_unavailable()
    mount = contextlib.nullcontext(None)
    if why is None:
        mount = slowfs.mounted(backing, mnt, rate)
    print(f"slow folder write rate: {rate} MB/s (1 MB = 10^6 bytes); source: "
          f"{DRIVE_RATE_SOURCE if rate == DRIVE_RATE_MBPS else '--rate-mbps'}", flush=True)

    size, n_img = PROFILE_DATA[args.profile]
    shards = make_shards(root, size, n_img)
    src = workspace_with(root, "heads-src", shards).root
    t0 = time.perf_counter()
    h = run_worker({"kind": "heads", "profile": args.profile, "workspace": str(src)}, root / "logs", "heads")
    print(f"heads stage (1 step, from scratch) for `all` to start from: {h['bytes'] / 1e6:.1f} MB "
          f"checkpoint, {time.perf_counter() - t0:.0f} s", flush=True)

    results: dict[str, list[dict]] = {c: [] for c in args.configs}
    n_steps = args.steps + 1
    try:
        mounted = mount.__enter__()
    except RuntimeError as e:
        why, mounted = f"FUSE mount refused here ({str(e).splitlines()[0][:300]})", None
    try:
        if mounted is not None:
            probe = slowfs.measure_write_rate(mounted)
            print(f"slow folder: REAL throttling, FUSE passthrough (benchmarks/slowfs.py) at {mounted}; "
                  f"a 16 MiB write+fsync through it measured {probe:.2f} MB/s", flush=True)
            drive_root = mounted
        else:
            print(f"slow folder: SIMULATED ({why}): the workspace is on local disk; b's background "
                  f"copies sleep bytes/{rate} MB/s; c is charged its measured checkpoint bytes / "
                  f"{rate} MB/s per save in the timed steps", flush=True)
            drive_root = root / "drive-sim"
            drive_root.mkdir()
        print(f"\n{args.profile} profile, `all` stage, {n_steps} steps per run (the first is not timed), "
              f"checkpoint every {args.every} in b and c, {args.repeats} alternating runs each", flush=True)
        for rep in range(args.repeats):
            for cfg in args.configs:
                name = f"{cfg}{rep}"
                # the workspace (shards + finished heads stage) is laid into the backing folder
                # directly: setting up is not what is measured
                shutil.copytree(src, (backing if mounted is not None else drive_root) / name)
                spec = {"kind": "run", "profile": args.profile, "workspace": str(drive_root / name),
                        "steps": n_steps,
                        "every": args.every if cfg in "bc" else 10 ** 6,
                        "local": str(local) if cfg == "b" else None,
                        "simulate_rate_mbps": rate if (mounted is None and cfg == "b") else None}
                r = run_worker(spec, root / "logs", name)
                if mounted is None and cfg == "c":  # charge the saves made between timed steps
                    extra = sum(s["bytes"] for s in r["saves"] if 1 <= s["step"] < r["end_step"]) / (rate * 1e6)
                    r["measured_s_per_step"] = r["s_per_step"]
                    r["s_per_step"] += extra / len(r["step_times"])
                results[cfg].append(r)
                print(_line(cfg, rep, r), flush=True)
                if cfg == "b":
                    _print_copies(r, args.every)
                shutil.rmtree((backing if mounted is not None else drive_root) / name, ignore_errors=True)
                shutil.rmtree(local, ignore_errors=True)
    finally:
        mount.__exit__(None, None, None)
    _summary(args, results, mounted is not None, rate)
    finals = [r["final_bytes"] for rs in results.values() for r in rs if r["final_bytes"]]
    return max(finals) if finals else None


def _gpu_pace(args, root: Path) -> None:
    """The ``--gpu-pace`` mode (benchmarks/gpu_pace.py): table 1, then the paced a/b runs."""
    import gpu_pace
    from bench_training import make_shards, workspace_with

    rate = args.rate_mbps
    rows = []
    for prof in [p for p in args.sizes.split(",") if p]:
        for stage in ("heads", "all"):
            rows.append(run_worker({"kind": "pace_size", "profile": prof, "stage": stage, "rate_mbps": rate,
                                    "tmp": str(root / "sizes")}, root / "logs", f"pace-size-{prof}-{stage}"))
            shutil.rmtree(root / "sizes", ignore_errors=True)
    gpu_pace.print_table(rows)
    by = {(r["profile"], r["stage"]): r for r in rows}
    demo, colab = by[(gpu_pace.PACE_PROFILE, gpu_pace.PACE_STAGE)], by.get(("colab", "all"))
    sim_rate = rate * demo["compact"] / colab["compact"] if colab else rate

    size, n_img = PROFILE_DATA[gpu_pace.PACE_PROFILE]
    src = workspace_with(root, "heads-src", make_shards(root, size, n_img)).root
    run_worker({"kind": "heads", "profile": gpu_pace.PACE_PROFILE, "workspace": str(src)}, root / "logs", "heads")
    steps = args.steps if args.steps != 20 else 240
    results: dict[str, list[dict]] = {"a": [], "b": []}
    drive_root, local = root / "drive", root / "local"
    drive_root.mkdir()
    for rep in range(args.repeats):
        for cfg in "ab":
            name = f"{cfg}{rep}"
            shutil.copytree(src, drive_root / name)
            spec = {"kind": "run", "profile": gpu_pace.PACE_PROFILE, "workspace": str(drive_root / name),
                    "steps": steps + 1, "every": args.every if cfg == "b" else 10 ** 6,
                    "local": str(local) if cfg == "b" else None, "pace_s": args.gpu_pace,
                    "simulate_rate_mbps": sim_rate if cfg == "b" else None, "fake_drive": cfg == "b"}
            r = run_worker(spec, root / "logs", name)
            results[cfg].append(r)
            print(_line(cfg, rep, r), flush=True)
            if cfg == "b":
                _print_copies(r, args.every)  # each copy: size, seconds, lag
            shutil.rmtree(drive_root / name, ignore_errors=True)
            shutil.rmtree(drive_root / f"{name}.Trash", ignore_errors=True)
            shutil.rmtree(local, ignore_errors=True)
    out = gpu_pace.paced_summary(results, rows, args.gpu_pace, args.every, rate, sim_rate)
    saved = HERE / "results" / "checkpoints_gpu_pace.json"
    saved.parent.mkdir(exist_ok=True)
    saved.write_text(json.dumps({"table1": rows, "paced": out, "steps": steps, "repeats": args.repeats},
                                indent=1, default=str) + "\n")
    print(f"figures saved to {saved}")


def copy_overlap(r: dict, every: int):
    """Mean step time of timed steps that ran while a background copy ran (most of the step)
    vs. those that did not; steps that include a save are left out of both. Returns
    ``((mean, n) during, (mean, n) outside)`` or None without timestamps."""
    steps_at, copies = r.get("steps_at"), [c for c in r.get("copies", []) if "t0" in c]
    if not steps_at:
        return None
    during, outside = [], []
    for (ta, _), (tb, step) in zip(steps_at, steps_at[1:]):
        if (step - 1) % every == 0:
            continue  # the save after step-1 is in this step's time
        overlap = sum(max(0.0, min(tb, c["t1"]) - max(ta, c["t0"])) for c in copies)
        (during if overlap > 0.5 * (tb - ta) else outside).append(tb - ta)

    def mean(x):
        return (statistics.mean(x) if x else float("nan"), len(x))

    return mean(during), mean(outside)


def _print_copies(r: dict, every: int) -> None:
    print(f"      background copies to the slow folder (lag = steps training was past the copied "
          f"checkpoint when its copy ended):")
    prev = None
    for c in r["copies"]:
        # a runtime lost just before this copy ended resumes from the previous copy
        lost = f"; lost if the runtime died just before: {c['ended_at'] - prev} steps" if prev is not None else ""
        print(f"        ckpt-{c['step']:<4d} {c['bytes'] / 1e6:8.1f} MB in {c['seconds']:6.1f} s "
              f"({c['bytes'] / 1e6 / max(c['seconds'], 1e-9):5.1f} MB/s), started at step "
              f"{c['started_at']}, ended at step {c['ended_at']}: lag {c['ended_at'] - c['step']} steps{lost}")
        prev = c["step"]
    ov = copy_overlap(r, every)
    if ov:
        (d, nd), (o, no) = ov
        print(f"        steps without a save: {d:.2f} s/step while a copy ran ({nd} steps), "
              f"{o:.2f} s/step otherwise ({no} steps)")
    saved = sorted({s["step"] for s in r["saves"]})
    copied = {c["step"] for c in r["copies"]}
    skipped = [s for s in saved if s not in copied]
    state = "complete" if r["final_problem"] is None else f"NOT COMPLETE: {r['final_problem']}"
    print(f"        saved locally: {saved}; never copied (a newer one was copied instead): {skipped}")
    print(f"        end wait for the last copy {r['end_wait']:.1f} s; final checkpoint in the slow "
          f"folder {Path(r['final']).name} (step {r['end_step']}/{r['planned']}): {state} "
          f"(check_checkpoint, deep read {r['check_s']:.1f} s)", flush=True)


def _summary(args, results: dict, real: bool, rate: float) -> None:
    print(f"\nsummary ({'real FUSE throttling' if real else 'SIMULATED slow folder'}, {rate} MB/s, "
          f"{args.profile} profile `all` stage); median s/step over runs, ratios of neighbouring runs:")
    med = {}
    for cfg, rs in results.items():
        if rs:
            med[cfg] = statistics.median(r["s_per_step"] for r in rs)
            print(f"  {cfg} {CONFIGS[cfg]:42s} {med[cfg]:7.3f} s/step   runs: "
                  + ", ".join(f"{r['s_per_step']:.3f}" for r in rs))
    if "a" not in results or not results["a"]:
        return
    for cfg, target in (("b", " (target <= 1.10)"), ("c", "")):
        if not results.get(cfg):
            continue
        per = [x["s_per_step"] / y["s_per_step"] for x, y in zip(results[cfg], results["a"])]
        print(f"  {cfg}/a  {statistics.median(per):.3f}{target}   per repeat: "
              + ", ".join(f"{p:.3f}" for p in per))
    if results.get("b"):
        lags = [c["ended_at"] - c["step"] for r in results["b"] for c in r["copies"]]
        secs = [c["seconds"] for r in results["b"] for c in r["copies"] if c["bytes"] > 1e6]
        ok = all(r["final_problem"] is None and r["end_step"] == r["planned"] for r in results["b"])
        lost = [b["ended_at"] - a["step"] for r in results["b"]
                for a, b in zip(r["copies"], r["copies"][1:]) if b["ended_at"] < r["end_step"]]
        if secs:
            print(f"  b: background copy {statistics.median(secs):.1f} s (median), Drive behind by "
                  f"up to {max(lags) if lags else 0} steps at the end of a copy, up to "
                  f"{max(lost) if lost else 0} steps just before a copy ended (during training); end wait "
                  + ", ".join(f"{r['end_wait']:.1f}" for r in results["b"])
                  + f" s; final checkpoint complete in the slow folder: {'yes' if ok else 'NO'}")
    if results.get("c"):
        cs = [s for r in results["c"] for s in r["saves"] if s["step"] > 0]
        if cs and real:
            print(f"  c: a save straight into the slow folder took {statistics.median(s['seconds'] for s in cs):.1f} s "
                  f"(median of {len(cs)}, {cs[0]['bytes'] / 1e6:.0f} MB)")


if __name__ == "__main__":
    main()
