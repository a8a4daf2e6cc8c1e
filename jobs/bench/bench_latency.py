"""The latency predictor against real timings: random subnets of every stage and extrapolated members, per runtime.

    python jobs/bench/bench_latency.py [--space digits-tiny] [--runtimes torch,onnxruntime] [--networks 60]
        [--families 4] [--steps 2] [--rounds 3] [--threads 1] [--clock auto] [--passes 2] [--repeats 30]
        [--min-time 0.05] [--calibration 16] [--seed 1] [--tables DIR] [--out results/bench/latency]

For each runtime (CPU): draws ``--networks`` random subnets over stages 0..S in turn (seed ``--seed``) and the
members of ``--families`` random families extrapolated ``--steps`` stages beyond S (``scalenas.search.extrapolate``
on a random base and a random chain of the space's stages), then builds (or resumes) the space's latency table
(``scalenas.latency.table.build_table``: every layer of stages 0..S plus the extrapolated members' layers, which lie
outside them, in ``--passes`` interleaved passes together with ``--calibration`` networks of stages 0..S for the
overhead fit, seed 0: none of them is a test network unless by chance), before any network is timed. Each network is
then timed whole as it is deployed: the PyTorch StandaloneNet, or its ONNX graph run in onnxruntime (exported as the
table's layers are, with the TorchScript exporter: 0.1-0.3 s a network against 4-7 s for the dynamo exporter
``export_onnx`` uses, and the same latency within the noise, 0.06-2 ms networks checked here). The networks are
timed in ``--rounds`` rounds, each in a new random order (interleaved: a burst of load hits one round of some
networks, not one network); a network's latency is the median over rounds. Threads are pinned (``--threads``,
torch.set_num_threads / onnxruntime intra-op threads) and ``--clock`` is the table's (auto: the calling thread's CPU
time for one thread).

The table's own calibration networks are timed again in the same rounds (interleaved with the test networks):
the median ratio of their latency now to their latency in the table is the machine's speed now relative to when
the table was built (on a machine shared with other work it drifts by 10-20 % within minutes, even in CPU time:
caches and the other hyperthread are shared). The metrics are reported raw and with the predictions scaled by
that factor ("speed-corrected"); the factor itself is reported.

Writes ``OUT.csv`` (one row per runtime and network: stage, kind, FLOPs, predicted and measured ms, the wall-clock
median beside it, the relative error raw and speed-corrected) and ``OUT.md`` (per runtime: share within +-10 %,
MAPE, max error, Kendall tau, against the targets >= 95 %, <= 5 %, >= 0.9), both atomically. Exit code 1 if a
target is missed (speed-corrected, all networks).
"""
from __future__ import annotations

import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # jobs/: jobkit
import jobkit  # noqa: E402  (puts the checkout and jobs/ on sys.path)
REPO = jobkit.REPO

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy.stats import kendalltau  # noqa: E402

from scalenas.io import atomic_write_csv, atomic_write_text  # noqa: E402
from scalenas.latency.layers import subnet_layers  # noqa: E402
from scalenas.latency.table import LatencyOptions, LatencyTable, build_table, time_networks  # noqa: E402
from scalenas.latency.timing import (device_name, runtime_version)
from scalenas.spaces.arch import derive_subnet, parse_subnet, sample_base, sample_scaling, sample_subnet  # noqa: E402
from scalenas.spaces.flops import subnet_flops_params  # noqa: E402
from scalenas.spaces.space import load_space  # noqa: E402

TARGETS = {"within10": 0.95, "mape": 0.05, "tau": 0.9}
COLUMNS = ["runtime", "network", "kind", "stage", "arch", "flops", "layers", "predicted_ms", "measured_ms",
           "wall_ms", "error", "speed", "error_corrected", "spread"]


def test_networks(space, n: int, families: int, steps: int, seed: int) -> list[tuple[str, int, object]]:
    """(kind, stage, subnet): ``n`` distinct random subnets over stages 0..S in turn, then extrapolated members."""
    from scalenas.search.extrapolate import extrapolate

    rng = random.Random(seed)
    out, keys = [], set()
    stages = space.num_scaling_stages + 1
    for i in range(1000 * n):
        stage, sub = sample_subnet(space, rng, stage=i % stages)
        k = derive_subnet(space, sub).key()
        if k not in keys:
            keys.add(k)
            out.append(("searched", stage, sub))
            if len(out) == n:
                break
    for _ in range(families):
        base = sample_base(space, rng)
        chain = [sample_scaling(space, s, rng) for s in range(1, stages)]
        for m in extrapolate(space, base, chain, steps):
            out.append(("extrapolated", m["stage"], parse_subnet(json.loads(m["arch"]), space, allow_outside=True)))
    return out


def metrics(pred: np.ndarray, meas: np.ndarray) -> dict[str, float]:
    err = pred / meas - 1.0
    tau = kendalltau(pred, meas).statistic if len(pred) > 1 else float("nan")
    return {"n": len(pred), "within10": float(np.mean(np.abs(err) <= 0.10)), "mape": float(np.mean(np.abs(err))),
            "max_error": float(np.max(np.abs(err))), "tau": float(tau)}


def main(argv: list[str] | None = None) -> int:
    ap = jobkit.parser(__doc__)
    ap.add_argument("--space", default="digits-tiny")
    ap.add_argument("--runtimes", default="torch,onnxruntime")
    ap.add_argument("--networks", type=int, default=60, help="random subnets over stages 0..S (default 60)")
    ap.add_argument("--families", type=int, default=4, help="random families extrapolated (default 4)")
    ap.add_argument("--steps", type=int, default=2, help="extrapolated members per family (default 2)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds of the networks (default 3)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", default="auto", choices=("auto", "wall", "cpu"))
    ap.add_argument("--passes", type=int, default=2, help="table passes (default 2)")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--min-time", type=float, default=0.05)
    ap.add_argument("--calibration", type=int, default=16)
    ap.add_argument("--seed", type=int, default=1, help="seed of the test networks (the tables use seed 0)")
    ap.add_argument("--tables", default=None, help="folder of the tables (kept, resumable; default: a temporary "
                    "folder, deleted)")
    ap.add_argument("--out", default=str(REPO / "results/bench/latency"), help="OUT.csv and OUT.md are written")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    space = load_space(args.space)
    runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    nets = test_networks(space, args.networks, args.families, args.steps, args.seed)
    print(f"{len(nets)} networks of {space.name} ({args.networks} searched, {len(nets) - args.networks} extrapolated)")
    rows, summary = [], []
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        tables = Path(args.tables) if args.tables else Path(tmp)
        for runtime in runtimes:
            # the table covers the extrapolated stages too (calibration networks there), measured on demand
            opts = LatencyOptions(runtime=runtime, threads=args.threads, clock=args.clock, passes=args.passes,
                                  repeats=args.repeats, min_time=args.min_time, calibration=args.calibration)
            path = tables / f"latency_{space.name}_{runtime}_t{args.threads}.csv"
            t0 = time.time()
            # every layer of stages 0..S, and the extrapolated members' layers, timed in the build's interleaved
            # passes (not on demand later, at another moment of a drifting machine)
            extra = [c for _, _, s in nets for c in subnet_layers(space, s)]
            built = build_table(space, path, opts, progress=sys.stderr.isatty(), extra_configs=extra)
            build_s = time.time() - t0
            table = LatencyTable.open(path, space)
            print(f"{runtime}: table {path.name}: {len(table.rows.layers)} layers ({built.measured} rows timed in "
                  f"{build_s:.0f} s); overhead "
                  f"{table.overhead.coef} (calibration MAPE {table.overhead.mape:.3f})", flush=True)
            pred = np.array([table.predict(s) for _, _, s in nets])
            refs = [(parse_subnet(json.loads(a), space, allow_outside=True), statistics.median(v))
                    for a, v in table.rows.networks.items()]
            t0 = time.time()
            timed = nets + [("reference", -1, s) for s, _ in refs]  # the table's calibration networks, again
            timings = time_networks(space, [sub for _, _, sub in timed], opts, args.rounds, args.seed,
                                    progress=lambda r, n: print(f"  round {r}/{n} timed", flush=True))
            meas, wall, spread = ([getattr(t, k) for t in timings] for k in ("ms", "wall_ms", "spread"))
            time_s = time.time() - t0
            speed = float(np.median([m / ms for m, (_, ms) in zip(meas[len(nets):], refs)]))
            meas = np.array(meas[:len(nets)])
            print(f"{runtime}: speed now / at the table's build: {speed:.3f} (median over {len(refs)} calibration "
                  "networks)", flush=True)
            for i, (kind, stage, sub) in enumerate(nets):
                rows.append({"runtime": runtime, "network": i, "kind": kind, "stage": stage, "arch": sub.to_json(),
                             "flops": subnet_flops_params(space, sub)[0], "layers": len(subnet_layers(space, sub)),
                             "predicted_ms": pred[i], "measured_ms": meas[i], "wall_ms": wall[i],
                             "error": pred[i] / meas[i] - 1.0, "speed": speed,
                             "error_corrected": pred[i] * speed / meas[i] - 1.0, "spread": spread[i]})
            for subset, mask in (("all", np.ones(len(nets), bool)),
                                 ("searched", np.array([k == "searched" for k, _, _ in nets])),
                                 ("extrapolated", np.array([k == "extrapolated" for k, _, _ in nets]))):
                if mask.any():
                    for corrected in (False, True):
                        summary.append({"runtime": runtime, "networks": subset, "corrected": corrected,
                                        **metrics(pred[mask] * (speed if corrected else 1.0), meas[mask]),
                                        "speed": speed, "runtime_version": runtime_version(runtime),
                                        "build_s": build_s, "timing_s": time_s,
                                        "table_layers": len(table.rows.layers),
                                        "overhead": " ".join(f"{c:.4g}" for c in table.overhead.coef)})
            for m in summary[-6:]:
                if m["networks"] == "all":
                    print(f"{runtime} {'speed-corrected' if m['corrected'] else 'raw'}: within10 {m['within10']:.3f} "
                          f"MAPE {m['mape']:.4f} max {m['max_error']:.3f} tau {m['tau']:.3f}", flush=True)
    out = Path(args.out)
    atomic_write_csv(out.with_suffix(".csv"), pd.DataFrame(rows, columns=COLUMNS))
    ok = write_markdown(out.with_suffix(".md"), summary, args, space, time.time() - started)
    return 0 if ok else 1


def write_markdown(path: Path, summary: list[dict], args, space, seconds: float) -> bool:
    ok = True
    lines = [f"# Latency predictor vs measured ({space.name}, {time.strftime('%Y-%m-%d')})", "",
             f"Machine: {device_name('cpu')}, {os.cpu_count()} cores, {platform.python_version()}; "
             f"{args.threads} thread(s), clock {args.clock}; whole run {seconds:.0f} s.", "",
             "Command: `python jobs/bench/bench_latency.py " + " ".join(sys.argv[1:]) + "`", "",
             "| runtime | networks | predictions | n | within ±10 % | MAPE | max error | Kendall tau | speed now / "
             "build | overhead (ms: network, layer, MFLOP) | table layers | build s | timing s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {s['runtime']} {s['runtime_version']} | {s['networks']} | "
                     f"{'speed-corrected' if s['corrected'] else 'raw'} | {s['n']} | {s['within10']:.3f} | "
                     f"{s['mape']:.4f} | {s['max_error']:.3f} | {s['tau']:.3f} | {s['speed']:.3f} | {s['overhead']} | "
                     f"{s['table_layers']} | {s['build_s']:.0f} | {s['timing_s']:.0f} |")
        if s["networks"] == "all" and s["corrected"]:
            ok &= s["within10"] >= TARGETS["within10"] and s["mape"] <= TARGETS["mape"] and s["tau"] >= TARGETS["tau"]
    lines += ["", f"Targets (all networks, per runtime): within ±10 % ≥ {TARGETS['within10']:.0%}, MAPE ≤ "
              f"{TARGETS['mape']:.0%}, Kendall tau ≥ {TARGETS['tau']}: {'met' if ok else 'NOT met'}.",
              "Per-network rows: " + path.with_suffix(".csv").name + "."]
    atomic_write_text(path, "\n".join(lines) + "\n")
    return ok


if __name__ == "__main__":
    sys.exit(main())
