"""Benchmark of the streaming data pipeline (issue: data that does not fit in memory).

1. Memory: ImageFolder trees of 5,000 and 50,000 JPEGs (96x96, 10 classes) are written to disk; the cifar-mbv3
   supernet trains 100 steps on each with the streaming source and 2 loader workers, while a sampler reads the
   RSS and PSS of the whole process tree (trainer + loader workers) from /proc every 0.1 s. Streaming is flat
   in the dataset size when the two peaks differ by < 200 MB.
2. Throughput: the loader alone (decode + collate, 2 workers) in images/s; a standalone model at 32 px and the
   supernet, both fed by the streaming loader with the standard augmentation, with the share of step time spent
   waiting for data (from ``train_log.csv``: ``data_wait_s`` per step over the step time); target < 10 % at 32 px.
3. Augmentation on the device: images/s of the kornia pipeline (standard, strong) vs the training step.

Writes ``results/bench/data_memory.csv``, ``results/bench/data_throughput.csv`` and ``results/bench/data.md``.
Run from the repository root:  python jobs/bench/bench_data.py  [--root /tmp/scalenas-bench-data] [--quick]
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # jobs/: jobkit
import jobkit  # noqa: E402  (puts the checkout and jobs/ on sys.path)
REPO = jobkit.REPO

from scalenas.io import atomic_write_csv, atomic_write_text  # noqa: E402

SPACE = "cifar-mbv3"


# ------------------------------------------------------------------------------------------ data
def make_tree(root: Path, n: int, size: int = 96, classes: int = 10, seed: int = 0) -> Path:
    """``n`` JPEGs of smooth random colour fields with a class-dependent pattern (not pure noise, so JPEG
    sizes and decode times are those of photographs rather than of static). Reused when complete."""
    from PIL import Image

    done = root / ".complete"
    if done.is_file() and done.read_text() == str(n):
        return root
    rng = np.random.default_rng(seed)
    per = n // classes
    yy, xx = np.mgrid[0:size, 0:size] / size
    for c in range(classes):
        d = root / f"class{c:02d}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per):
            base = rng.random((6, 6, 3))
            img = np.asarray(Image.fromarray((base * 255).astype(np.uint8)).resize((size, size),
                                                                                     Image.Resampling.BICUBIC))
            stripe = (np.sin((xx * (c + 1) + yy * (i % 3 + 1)) * 6.28) * 40)[..., None]
            arr = np.clip(img.astype(np.float32) + stripe + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(d / f"{i:05d}.jpg", quality=90)
    done.write_text(str(n))
    return root


# ------------------------------------------------------------------------------------------ memory sampling
def _children(pid: int) -> list[int]:
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                out += [int(p) for p in fh.read().split()]
    except OSError:
        pass
    return out


def _tree(pid: int) -> list[int]:
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo += _children(p)
    return seen


def _hwm(pid: int) -> int:
    """The process's peak resident set (VmHWM), exact (the kernel keeps it), in bytes."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _mem(pid: int) -> tuple[int, int]:
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, pss


def run_measured(cmd: list[str], env: dict) -> dict:
    """Run ``cmd``; peak summed RSS / PSS over its process tree and the largest process count."""
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = {"rss": 0, "pss": 0, "procs": 0}
    hwm: dict[int, int] = {}

    def sample() -> None:
        while proc.poll() is None:
            pids = _tree(proc.pid)
            for p in pids:
                hwm[p] = max(hwm.get(p, 0), _hwm(p))
            mems = [_mem(p) for p in pids]
            peak["rss"] = max(peak["rss"], sum(m[0] for m in mems))
            peak["pss"] = max(peak["pss"], sum(m[1] for m in mems))
            peak["procs"] = max(peak["procs"], len(pids))
            time.sleep(0.1)

    t0 = time.perf_counter()
    th = threading.Thread(target=sample, daemon=True)
    th.start()
    _, err = proc.communicate()
    th.join()
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{err[-2000:]}")
    main_hwm = hwm.pop(proc.pid, 0)
    return {**peak, "main_hwm": main_hwm, "workers_hwm": sum(hwm.values()), "wall_s": time.perf_counter() - t0}


def wait_share(log: Path, batch: int) -> dict:
    """Mean data wait per step over the mean step time, leaving out the first log row (worker start-up)."""
    df = pd.read_csv(log).iloc[1:]
    step_s = batch / df["images_per_s"]
    return {"images_per_s": float(df["images_per_s"].median()),
            "data_wait_ms": float(df["data_wait_s"].mean() * 1e3),
            "step_ms": float(step_s.mean() * 1e3),
            "wait_share": float((df["data_wait_s"] / step_s).mean())}


def loader_rate(tree: Path, workers: int, batch: int, batches: int, store: int) -> float:
    import torch

    from scalenas.data.datasets import BatchIterator, load_data

    torch.set_num_threads(1)
    data = load_data(str(tree), source="stream", workers=workers, in_channels=3, store_size=store)
    it = BatchIterator(data.train, batch, seed=0)
    next(it)  # start the workers
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    rate = batches * batch / (time.perf_counter() - t0)
    it.close()
    return rate


def augment_rates(batch: int, reps: int) -> list[dict]:
    import torch

    from scalenas.data.augment import DevicePipeline

    torch.set_num_threads(1)
    rows = []
    x = torch.randint(0, 255, (batch, 3, 56, 56), dtype=torch.uint8)
    for level in ("shift", "standard", "strong"):
        p = DevicePipeline(level, True, [0.5] * 3, [0.25] * 3, stored=56)
        p.train(x, 32, 0)
        t0 = time.perf_counter()
        for k in range(reps):
            p.train(x, 32, k)
        rows.append({"measure": f"augment_{level}_cpu", "value": reps * batch / (time.perf_counter() - t0),
                     "unit": "images/s", "detail": f"batch {batch}, stored 56 -> 32 px, 1 thread"})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = jobkit.parser(__doc__)
    ap.add_argument("--root", default="/tmp/scalenas-bench-data", help="where the JPEG trees are written")
    ap.add_argument("--sizes", type=int, nargs="+", default=[5000, 50000])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--store-size", type=int, default=56)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "results" / "bench"))
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run of the script)")
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes, args.steps = [200, 400], 6
    root, out = Path(args.root), Path(args.out)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    shared = ["--source", "stream", "--workers", str(args.workers), "--store-size", str(args.store_size),
              "--batch-size", str(args.batch_size), "--threads", "1", "--no-progress",
              "--log-every", "10" if not args.quick else "2", "--augment", "standard",
              "--checkpoint-every", str(10 * args.steps), "--no-tensorboard", "--holdout-frac", "0.002",
              "--test-frac", "0.002"]
    common = shared + ["--panel-random", "0", "--bn-calib-batches", "1"]

    mem_rows = []
    for n in args.sizes:
        tree = make_tree(root / f"jpeg{n}", n)
        run = root / f"run{n}"
        subprocess.run(["rm", "-rf", str(run)], check=True)
        cmd = [sys.executable, "-m", "scalenas.cli", "train-supernet", "--space", SPACE, "--data", str(tree),
               "--steps", str(args.steps), "--out", str(run), *common]
        print(f"memory: {n} images ...", flush=True)
        m = run_measured(cmd, env)
        share = wait_share(run / "train_log.csv", args.batch_size)
        mem_rows.append({"images": n, "peak_rss_mb": m["rss"] / 2 ** 20, "peak_pss_mb": m["pss"] / 2 ** 20,
                         "trainer_peak_rss_mb": m["main_hwm"] / 2 ** 20,
                         "workers_peak_rss_mb": m["workers_hwm"] / 2 ** 20,
                         "processes": m["procs"], "wall_s": m["wall_s"], "steps": args.steps,
                         "float32_in_memory_mb": n * 3 * args.store_size ** 2 * 4 / 2 ** 20,
                         "supernet_wait_share": share["wait_share"], "command": " ".join(cmd[1:])})
        print(f"  peak RSS {mem_rows[-1]['peak_rss_mb']:.0f} MB, PSS {mem_rows[-1]['peak_pss_mb']:.0f} MB, "
              f"{m['procs']} processes, wait share {share['wait_share']:.3f}", flush=True)
    mem = pd.DataFrame(mem_rows)
    mem["pss_diff_to_smallest_mb"] = mem["peak_pss_mb"] - mem["peak_pss_mb"].iloc[0]
    mem["rss_diff_to_smallest_mb"] = mem["peak_rss_mb"] - mem["peak_rss_mb"].iloc[0]
    mem["trainer_diff_to_smallest_mb"] = mem["trainer_peak_rss_mb"] - mem["trainer_peak_rss_mb"].iloc[0]
    atomic_write_csv(out / "data_memory.csv", mem)

    # throughput: the loader alone, then what a 32 px standalone model and the supernet consume
    big = root / f"jpeg{args.sizes[-1]}"
    rows = [{"measure": "loader_alone", "value": loader_rate(big, args.workers, args.batch_size,
                                                             20 if not args.quick else 4, args.store_size),
             "unit": "images/s", "detail": f"{args.workers} workers, decode + collate, stored {args.store_size} px"}]
    from scalenas.spaces.space import load_space
    from scalenas.spaces.arch import extreme_subnets

    arch = extreme_subnets(load_space(SPACE), 0)[1].to_json()  # stage 0's largest: 32 px
    run = root / "run-standalone32"
    subprocess.run(["rm", "-rf", str(run)], check=True)
    cmd = [sys.executable, "-m", "scalenas.cli", "train", "--arch", arch, "--data", str(big), "--steps",
           str(args.steps), "--out", str(run), *shared]
    print("throughput: standalone 32 px ...", flush=True)
    subprocess.run(cmd, env=env, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    s32 = wait_share(run / "train_log.csv", args.batch_size)
    rows += [{"measure": "standalone32_step", "value": s32["images_per_s"], "unit": "images/s",
              "detail": f"stage-0 largest of {SPACE} at 32 px, standard augmentation, 1 thread"},
             {"measure": "standalone32_wait_share", "value": s32["wait_share"], "unit": "fraction",
              "detail": f"data wait {s32['data_wait_ms']:.1f} ms of {s32['step_ms']:.1f} ms per step"}]
    sup = wait_share(root / f"run{args.sizes[-1]}" / "train_log.csv", args.batch_size)
    rows += [{"measure": "supernet_step", "value": sup["images_per_s"], "unit": "images/s",
              "detail": f"{SPACE} supernet, sampled resolutions 32-50 px, 1 thread"},
             {"measure": "supernet_wait_share", "value": sup["wait_share"], "unit": "fraction",
              "detail": f"data wait {sup['data_wait_ms']:.1f} ms of {sup['step_ms']:.1f} ms per step"}]
    rows += augment_rates(args.batch_size, 20 if not args.quick else 2)
    thr = pd.DataFrame(rows)
    atomic_write_csv(out / "data_throughput.csv", thr)

    diff = float(mem["peak_pss_mb"].max() - mem["peak_pss_mb"].min())
    lines = [
        "# Streaming data pipeline: memory and throughput",
        "",
        f"Command: `python jobs/bench/bench_data.py{' --quick' if args.quick else ''}` on {os.cpu_count()} cores "
        f"({platform.processor() or platform.machine()}); trees of 96x96 JPEGs, 10 classes; {SPACE} supernet, "
        f"{args.steps} steps, batch {args.batch_size}, stored at {args.store_size} px, {args.workers} loader "
        "workers, standard augmentation, 1 torch thread.",
        "",
        "## Memory (whole process tree: trainer + loader workers)",
        "",
        mem[["images", "peak_pss_mb", "peak_rss_mb", "trainer_peak_rss_mb", "workers_peak_rss_mb", "processes",
             "float32_in_memory_mb", "pss_diff_to_smallest_mb", "trainer_diff_to_smallest_mb",
             "wall_s"]].round(1).to_markdown(index=False),
        "",
        f"Peak PSS of the whole tree differs by **{diff:.0f} MB** between the sizes (target < 200 MB): "
        f"{'met' if diff < 200 else 'NOT met'}; the trainer's exact peak (VmHWM) by "
        f"{float(mem['trainer_peak_rss_mb'].max() - mem['trainer_peak_rss_mb'].min()):.0f} MB. "
        "RSS counts the pages the forked workers share with the trainer once per process (the ~4 GB of the "
        f"{SPACE} supernet's 318 M parameters, gradients and momentum are most of it); PSS splits shared pages, "
        "so its sum is the real footprint. Sampled every 0.1 s; VmHWM is the kernel's own high-water mark.",
        "",
        "## Throughput",
        "",
        thr.assign(value=thr["value"].round(3)).to_markdown(index=False),
        "",
        f"Share of step time waiting for data at 32 px: **{s32['wait_share'] * 100:.1f} %** (target < 10 %: "
        f"{'met' if s32['wait_share'] < 0.10 else 'NOT met'}).",
    ]
    atomic_write_text(out / "data.md", "\n".join(lines) + "\n")
    print(json.dumps({"pss_diff_mb": diff, "wait_share_32px": s32["wait_share"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
