"""Supernet evaluation throughput: in-process vs 1 Ray worker vs 2 Ray workers, the REAL SupernetEvaluator.

    python jobs/bench/bench_eval_throughput.py --supernet RUN/checkpoint.pt [--items 24] [--rounds 3]
        [--calib-batches 4] [--seed 0] [--csv results/bench/eval_throughput.csv]

Every mode scores the same list of ``--items`` distinct subnets (drawn with the supernet's hierarchical stage
probabilities, deduplicated by built network) with one torch thread per evaluator: in this process
(``workers=0``), one Ray actor, two Ray actors. Each pool is warmed first with one ``map`` call (every evaluator
built, supernet and data loaded), so the timing is evaluation throughput, not start-up. All three pools stay up
and the modes are interleaved round by round; each mode keeps its best round, so a burst of load from another
process hits one round rather than one mode. The results of every mode must be identical (fitness does not
depend on the number of workers), otherwise the script fails.

Targets: 2 workers vs 1 >= 1.6x, 1 worker vs in-process >= 0.85x. Ray runs locally on 127.0.0.1 only
(``scalenas.search.raylocal.start_local_ray``) and is shut down at the end. Writes the CSV atomically.
"""
from __future__ import annotations

import functools
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # jobs/: jobkit
import jobkit  # noqa: E402  (puts the checkout and jobs/ on sys.path)
REPO = jobkit.REPO

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per evaluator; set before torch is imported

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from scalenas.spaces.arch import sample_subnet  # noqa: E402
from scalenas.train.checkpoint import checkpoint_space, read_checkpoint, resolve_checkpoint  # noqa: E402
from scalenas.search.strategy import built_key  # noqa: E402
from scalenas.search.fitness import SupernetEvaluator  # noqa: E402
from scalenas.io import atomic_write_csv  # noqa: E402
from scalenas.search.raylocal import start_local_ray  # noqa: E402
from scalenas.search.raypool import EvaluatorPool  # noqa: E402

MODES = (("inprocess", 0), ("ray", 1), ("ray", 2))
COLUMNS = ["mode", "workers", "threads", "items", "seconds", "items_per_s", "ratio_vs_inprocess",
           "ratio_vs_1worker", "processes_used", "rounds", "calib_batches", "device", "cpus", "supernet"]


def distinct_subnets(space, n: int, seed: int, exclude: set[str] = frozenset()) -> list[str]:
    """``n`` subnet JSONs that build ``n`` different networks (none in ``exclude``)."""
    rng = random.Random(seed)
    out, keys = [], set(exclude)
    for _ in range(1000 * n):
        _, sub = sample_subnet(space, rng)
        k = built_key(space, sub)
        if k not in keys:
            keys.add(k)
            out.append(sub.to_json())
            if len(out) == n:
                return out
    raise SystemExit(f"could not draw {n} distinct subnets from {space.name}")


def main(argv: list[str] | None = None) -> None:
    ap = jobkit.parser(__doc__)
    ap.add_argument("--supernet", default=None, help="supernet checkpoint or run folder (default: latest run)")
    ap.add_argument("--items", type=int, default=24, help="distinct subnets per timed round (default 24)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; each mode keeps its best")
    ap.add_argument("--calib-batches", type=int, default=4, help="BN recalibration batches (search default 4)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--csv", default=str(REPO / "results/bench/eval_throughput.csv"))
    args = ap.parse_args(argv)
    if args.items < 1 or args.rounds < 1:
        raise SystemExit("--items and --rounds must be >= 1")
    if args.supernet is None:
        from scalenas.train.supernet import latest_run

        args.supernet = str(latest_run())
    ckpt = resolve_checkpoint(args.supernet)
    space = checkpoint_space(read_checkpoint(ckpt), str(ckpt))
    torch.set_num_threads(1)

    items = distinct_subnets(space, args.items, args.seed)
    warm = distinct_subnets(space, 4, args.seed + 1, exclude={built_key(space, _parse(space, i)) for i in items})
    make = functools.partial(SupernetEvaluator, str(ckpt), calib_batches=args.calib_batches, device=args.device,
                             threads=1)
    gpus = 1.0 if args.device == "cuda" else 0.0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{len(items)} distinct subnets of {space.name}; supernet {ckpt}; {cpus} CPUs; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)

    # Ray gets 3 logical CPUs so that the 1-worker and the 2-worker pools coexist; only one pool computes
    # at any moment, so each timed mode still uses at most 2 cores.
    start_local_ray(num_cpus=3, object_store_mb=100)
    import ray

    best = {m: float("inf") for m in MODES}
    used = {m: 0 for m in MODES}  # distinct evaluator processes that scored items (all of them, or a pool idles)
    pools: dict = {}
    try:
        for mode, workers in MODES:
            t0 = time.perf_counter()
            pools[mode, workers] = EvaluatorPool(make, workers=workers, threads_per_worker=1,
                                                 gpus_per_worker=gpus * (workers > 0))
            pools[mode, workers].map(warm[:max(2, 2 * workers)])  # warm: every evaluator built and used once
            print(f"{mode:9s} workers={workers}: ready in {time.perf_counter() - t0:.1f} s (not timed)", flush=True)
        reference = None
        for r in range(args.rounds):
            for key in MODES:
                t0 = time.perf_counter()
                results = pools[key].map(items)
                seconds = time.perf_counter() - t0
                top1 = [x["top1"] for x in results]
                if reference is None:
                    reference = top1
                elif top1 != reference:
                    raise SystemExit(f"{key}: top-1 values differ from in-process; the comparison is meaningless")
                best[key] = min(best[key], seconds)
                used[key] = max(used[key], len({x["pid"] for x in results}))
                print(f"round {r} {key[0]:9s} workers={key[1]} {seconds:7.2f} s  "
                      f"{len(items) / seconds:6.2f} items/s", flush=True)
    finally:
        for pool in pools.values():
            pool.close()
        ray.shutdown()

    rate = {k: len(items) / best[k] for k in MODES}
    rows = [{"mode": mode, "workers": workers, "threads": 1, "items": len(items),
             "seconds": round(best[mode, workers], 3), "items_per_s": round(rate[mode, workers], 3),
             "ratio_vs_inprocess": round(rate[mode, workers] / rate[MODES[0]], 3),
             "ratio_vs_1worker": round(rate[mode, workers] / rate[MODES[1]], 3),
             "processes_used": used[mode, workers],
             "rounds": args.rounds, "calib_batches": args.calib_batches, "device": args.device, "cpus": cpus,
             "supernet": str(ckpt)}
            for mode, workers in MODES]
    frame = pd.DataFrame(rows, columns=COLUMNS)
    atomic_write_csv(args.csv, frame)
    print(frame.drop(columns=["supernet"]).to_string(index=False))
    two, one = rows[2]["ratio_vs_1worker"], rows[1]["ratio_vs_inprocess"]
    print(f"2 workers vs 1: {two:.2f}x (target >= 1.6, {'met' if two >= 1.6 else 'NOT met'}); "
          f"1 worker vs in-process: {one:.2f}x (target >= 0.85, {'met' if one >= 0.85 else 'NOT met'}); "
          f"wrote {args.csv}")


def _parse(space, item: str):
    from scalenas.spaces.arch import parse_subnet

    return parse_subnet(json.loads(item), space)


if __name__ == "__main__":
    main()
