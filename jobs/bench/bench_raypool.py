"""Throughput of EvaluatorPool: in-process vs 1 Ray worker vs 2 Ray workers (1 thread each).

    python jobs/bench/bench_raypool.py [--items 60] [--rounds 3] [--evaluator module:callable]
                                       [--out results/bench/raypool.csv]

Every mode evaluates the same list of items after a warm-up (which builds every evaluator), so the timing is
evaluation throughput, not start-up. Modes are interleaved over ``--rounds`` rounds and each keeps its best
round (robust to other load on a shared machine). ``--evaluator`` names a picklable zero-argument factory
(the real supernet evaluator, later); the default is a CPU-bound torch evaluator of ~50-100 ms per item, the
cost of one subnet evaluation. Targets: 2 workers vs 1 >= 1.6x, 1 worker vs in-process >= 0.85x.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # jobs/: jobkit
import jobkit  # noqa: E402  (puts the checkout and jobs/ on sys.path)
REPO = jobkit.REPO

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from scalenas.io import atomic_write_csv  # noqa: E402
from scalenas.search.raylocal import start_local_ray  # noqa: E402
from scalenas.search.raypool import EvaluatorPool  # noqa: E402


class CpuTorchEvaluator:
    """Stand-in for a supernet evaluator: state built once (a small CNN and a fixed batch), then each item
    picks a width and depth from its hash and runs a no-grad forward pass."""

    def __init__(self, batch: int = 32, res: int = 32) -> None:
        # Same weights in every process (a loaded checkpoint in the real thing); fork_rng so that building
        # in-process leaves the caller's global RNG alone.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.stem = torch.nn.Conv2d(3, 64, 3, padding=1)
            self.blocks = torch.nn.ModuleList(torch.nn.Conv2d(64, 64, 3, padding=1) for _ in range(4))
            self.head = torch.nn.Linear(64, 10)
            self.x = torch.randn(batch, 3, res, res)
        self.eval()

    def eval(self) -> None:
        for m in (self.stem, self.blocks, self.head):
            m.eval()

    def evaluate(self, item: str) -> dict:
        h = int(hashlib.sha256(item.encode()).hexdigest()[:8], 16)
        width, depth = 32 + 8 * (h % 5), 2 + (h // 5) % 3  # 32..64 channels, 2..4 blocks
        with torch.no_grad():
            y = torch.relu(torch.nn.functional.conv2d(self.x, self.stem.weight[:width], self.stem.bias[:width],
                                                      padding=1))
            for blk in list(self.blocks)[:depth]:
                y = torch.relu(torch.nn.functional.conv2d(y, blk.weight[:width, :width], blk.bias[:width],
                                                          padding=1))
            logits = torch.nn.functional.linear(y.mean((2, 3)), self.head.weight[:, :width], self.head.bias)
        return {"top1": round(float(logits.softmax(1).max(1).values.mean()), 6)}


def load_factory(spec: str | None) -> Callable[[], object]:
    """``module:callable`` -> the callable; None -> the default evaluator class."""
    if not spec:
        return CpuTorchEvaluator
    module, _, name = spec.partition(":")
    if not module or not name:
        raise SystemExit(f"--evaluator must be module:callable, got {spec!r}")
    return getattr(importlib.import_module(module), name)


def items_for(n: int, tag: str) -> list[str]:
    return [json.dumps({"bench": tag, "i": i}, sort_keys=True, separators=(",", ":")) for i in range(n)]


MODES = (("inprocess", 0), ("ray", 1), ("ray", 2))


def main(argv: list[str] | None = None) -> None:
    ap = jobkit.parser(__doc__)
    ap.add_argument("--items", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best round of each mode counts")
    ap.add_argument("--evaluator", default=None, help="module:callable, a zero-arg evaluator factory")
    ap.add_argument("--out", default=str(REPO / "results/bench/raypool.csv"))
    args = ap.parse_args(argv)
    factory = load_factory(args.evaluator)
    items = items_for(args.items, "timed")

    # All three pools stay up and the modes are interleaved round by round, so a burst of load from
    # another process hits one round, not one mode; best-of-rounds then drops it. Ray is told 3 CPUs so
    # that the 1-worker and 2-worker pools can coexist: only one pool computes at any moment.
    start_local_ray(num_cpus=3, object_store_mb=100)
    import ray

    best = {m: float("inf") for m in MODES}
    pools: dict = {}
    try:
        for mode, workers in MODES:
            pools[mode, workers] = EvaluatorPool(factory, workers=workers, threads_per_worker=1)
            pools[mode, workers].map(items_for(max(1, workers) * 2, "warmup"))  # every evaluator built, warm
        reference = None
        for r in range(args.rounds):
            for key in MODES:
                t0 = time.perf_counter()
                results = pools[key].map(items)
                seconds = time.perf_counter() - t0
                if reference is None:
                    reference = results
                elif results != reference:  # same numbers in every mode, or the comparison is meaningless
                    raise SystemExit(f"{key}: results differ from in-process")
                best[key] = min(best[key], seconds)
                print(f"round {r} {key[0]:9s} workers={key[1]} {seconds:7.2f} s  {len(items) / seconds:6.2f} items/s",
                      flush=True)
    finally:
        for pool in pools.values():
            pool.close()
        ray.shutdown()

    base = len(items) / best[MODES[0]]
    rows = [{"mode": mode, "workers": workers, "threads": 1, "items": len(items),
             "seconds": round(best[mode, workers], 3), "items_per_s": round(len(items) / best[mode, workers], 2),
             "ratio_vs_inprocess": round(len(items) / best[mode, workers] / base, 3)}
            for mode, workers in MODES]
    frame = pd.DataFrame(rows, columns=["mode", "workers", "threads", "items", "seconds", "items_per_s",
                                        "ratio_vs_inprocess"])
    atomic_write_csv(args.out, frame)
    print(frame.to_string(index=False))
    print(f"2 workers vs 1: {rows[2]['items_per_s'] / rows[1]['items_per_s']:.2f}x (target >= 1.6); "
          f"1 worker vs in-process: {rows[1]['ratio_vs_inprocess']:.2f}x (target >= 0.85)")


if __name__ == "__main__":
    main()
