"""Latency-constrained vs FLOPs-constrained family on the animals supernet, both timed on this CPU (issue 25, item 4).

    python jobs/bench/latency_evidence.py [--supernet RUN] [--table TABLE] [--work DIR] [--steps 800]
        [--population 8] [--generations 3] [--seed 0] [--workers 0] [--latency-targets top|stages]
        [--rounds 5] [--repeats 30] [--out results/bench/latency_evidence]

End to end with the real CLI (``scalenas ...`` in a subprocess each):

1. ``scalenas train-supernet`` with ``scalenas demo``'s recipe (animals job, ``--steps`` one-path steps of batch 96,
   no sandwich, seed ``--seed``, one thread) into ``WORK/supernet`` (a finished run there is left as it is, an
   interrupted one resumed); skipped when ``--supernet RUN`` (a run folder or its checkpoint) is given;
2. ``scalenas latency build --space animals-tiny --runtime onnxruntime --batch 1 --threads 1 --out TABLE``
   (default ``WORK/table.csv``; a finished table is reused, an interrupted one resumed);
3. ``scalenas search`` markov, as the demo searches: the demo's FLOPs target (``reachable_target``), population 8,
   3 generations, 2 elites; then the same search (same seed, population, generations, tolerance) with
   ``--target-latency`` instead: ``top`` (default) puts the top stage's target at the FLOPs family's predicted
   top-stage latency and ``--growth`` at that family's predicted latency ratio per stage (stage 0 to the top: its
   latency grows faster than its FLOPs, so the space's growth of 2 would put stage 0 out of reach), so that both
   families span the same latency range; ``stages`` gives every stage the FLOPs family's predicted latency of that
   stage (a comma list);
4. every searched member of both families (stages 0..S) exported to ONNX (``scalenas.latency.timing.onnx_bytes``)
   and timed in onnxruntime on the CPU, batch 1, one pinned thread (``prepare`` + ``measure``, the table's clock:
   the thread's CPU time) in ``--rounds`` rounds, each in a new random order; a member's latency is the median of
   its per-round medians;
5. writes ``OUT.csv`` (family, stage, FLOPs, predicted and measured ms, supernet top-1) and ``OUT.md``: each family's
   supernet top-1 interpolated against log measured latency at the other family's members inside the latency range
   both families cover, and the mean difference (latency family minus FLOPs family) at those points.

Supernet top-1 is the search's own fitness of each member (holdout, BN recalibrated), the same evaluator for both
searches. Standalone training of the members is not done here.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # jobs/: jobkit
import jobkit  # noqa: E402  (puts the checkout and jobs/ on sys.path)
REPO = jobkit.REPO

import numpy as np  # noqa: E402

COLUMNS = ["family", "stage", "flops", "target_flops", "target_latency_ms", "feasible", "predicted_ms", "measured_ms",
           "wall_ms", "spread", "supernet_top1", "arch"]
SPACE = "animals-tiny"
DEMO_BATCH = 96


def scalenas(*argv: str) -> None:
    """``scalenas ARGV`` in a subprocess (this checkout's package), output passed through; a failure stops here."""
    cmd = [sys.executable, "-m", "scalenas.cli.main", *argv]
    print("$ scalenas " + " ".join(argv), flush=True)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    rc = subprocess.call(cmd, env=env)
    if rc != 0:
        raise SystemExit(f"scalenas {argv[0]} failed (exit {rc})")


def checkpoint_of(path: Path) -> Path:
    from scalenas.runs import SUPERNET_CKPT

    return path / SUPERNET_CKPT if path.is_dir() else path


def family(folder: Path, table, space, name: str) -> list[dict]:
    """The searched members of the search in ``folder`` with their predicted latency (``table``)."""
    import pandas as pd

    from scalenas.report.family import family_table
    from scalenas.runs import SearchFolder
    from scalenas.spaces.arch import parse_subnet

    frame = family_table(folder)
    raw = pd.read_csv(folder / SearchFolder.FAMILY)
    rows = []
    for r, t in zip(frame.to_dict("records"), raw.to_dict("records")):
        if r["kind"] != "searched":
            continue
        sub = parse_subnet(json.loads(r["arch"]), space, allow_outside=True)
        rows.append({"family": name, "stage": r["stage"], "flops": r["flops"],
                     "target_flops": t.get("target_flops", ""), "target_latency_ms": t.get("target_latency_ms", ""),
                     "feasible": bool(t.get("feasible", True)),
                     "predicted_ms": table.predict(sub), "supernet_top1": r["supernet_top1"], "arch": r["arch"],
                     "_subnet": sub})
    return rows


def time_members(space, rows: list[dict], rounds: int, repeats: int, min_time: float, seed: int) -> None:
    """``measured_ms`` (median over rounds of each round's median, the thread's CPU time), ``wall_ms`` and
    ``spread`` of every row's network: its ONNX graph in onnxruntime, CPU, batch 1, one thread, rounds interleaved
    in random orders (``scalenas.latency.table.time_networks``)."""
    from scalenas.latency.table import LatencyOptions, time_networks

    options = LatencyOptions(runtime="onnxruntime", device="cpu", batch=1, threads=1, clock="auto", warmup=10,
                             repeats=repeats, min_time=min_time)
    timings = time_networks(space, [r["_subnet"] for r in rows], options, rounds, seed,
                            progress=lambda k, n: print(f"  timing round {k}/{n} done", flush=True))
    for r, t in zip(rows, timings):
        r["measured_ms"], r["wall_ms"], r["spread"] = t.ms, t.wall_ms, t.spread


def compare(rows: list[dict], a: str, b: str) -> list[dict]:
    """Family ``a``'s supernet top-1 interpolated (linear in log measured ms) at each member of family ``b`` whose
    measured latency lies inside ``a``'s measured range: one dict per such member."""
    pa = sorted((np.log(r["measured_ms"]), r["supernet_top1"]) for r in rows if r["family"] == a)
    xs, ys = np.array([p[0] for p in pa]), np.array([p[1] for p in pa])
    out = []
    for r in rows:
        if r["family"] != b:
            continue
        x = np.log(r["measured_ms"])
        if xs[0] <= x <= xs[-1]:
            out.append({"at": b, "stage": r["stage"], "measured_ms": r["measured_ms"],
                        f"{b}_top1": r["supernet_top1"], f"{a}_top1": float(np.interp(x, xs, ys))})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = jobkit.parser(__doc__)
    ap.add_argument("--supernet", default=None, help="trained animals supernet (run folder or checkpoint); default: "
                    "train one into WORK/supernet (or reuse the one there)")
    ap.add_argument("--table", default=None, help="onnxruntime CPU latency table (default WORK/table.csv); reused "
                    "or resumed when present")
    ap.add_argument("--work", default="/tmp/latency_evidence", help="folder of the runs (default %(default)s)")
    ap.add_argument("--steps", type=int, default=800, help="supernet training steps (default: the demo's 800)")
    ap.add_argument("--population", type=int, default=8)
    ap.add_argument("--generations", type=int, default=3)
    ap.add_argument("--elites", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=0, help="Ray evaluation workers of both searches (default 0: "
                    "in-process)")
    ap.add_argument("--latency-targets", choices=("top", "stages"), default="top")
    ap.add_argument("--table-passes", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (default 5)")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--min-time", type=float, default=0.05)
    ap.add_argument("--out", default=str(REPO / "results/bench/latency_evidence"))
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from scalenas.latency.table import LatencyTable
    from scalenas.spaces.targets import format_flops, reachable_target
    from scalenas.train.checkpoint import checkpoint_space, read_checkpoint

    started = time.time()
    seconds: dict[str, float] = {}
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    t0 = time.time()
    ckpt = checkpoint_of(Path(args.supernet)) if args.supernet else checkpoint_of(work / "supernet")
    if args.supernet:
        if not ckpt.is_file():
            raise SystemExit(f"--supernet {args.supernet}: no checkpoint there")
        print(f"supernet: reusing {ckpt}", flush=True)
    else:  # the demo's recipe; a finished run in WORK/supernet is left as it is, an interrupted one resumed
        scalenas("train-supernet", "--job", "animals", "--steps", str(args.steps), "--batch-size", str(DEMO_BATCH),
                 "--no-sandwich", "--no-inplace-distill", "--checkpoint-every", str(max(50, min(200, args.steps))),
                 "--seed", str(args.seed), "--threads", "1", "--no-progress", "--out", str(work / "supernet"),
                 *(["--resume"] if ckpt.is_file() else []))
    seconds["train-supernet"] = time.time() - t0
    space = checkpoint_space(read_checkpoint(ckpt), str(ckpt))

    t0 = time.time()
    table_path = Path(args.table) if args.table else work / "table.csv"
    scalenas("latency", "build", "--space", space.name, "--device", "cpu", "--runtime", "onnxruntime", "--batch", "1",
             "--threads", "1", "--passes", str(args.table_passes), "--no-progress", "--out", str(table_path))
    seconds["latency build"] = time.time() - t0
    table = LatencyTable.open(table_path, space, lazy=True)

    common = ["--supernet", str(ckpt), "--strategy", "markov", "--population", str(args.population),
              "--generations", str(args.generations), "--elites", str(args.elites), "--seed", str(args.seed),
              "--workers", str(args.workers), "--no-progress", "--force"]
    t0 = time.time()
    target = reachable_target(space)
    flops_dir = work / "search_flops"
    scalenas("search", *common, "--target-flops", str(target), "--out", str(flops_dir))
    seconds["search flops"] = time.time() - t0
    rows = family(flops_dir, table, space, "flops")

    t0 = time.time()
    lat_dir = work / "search_latency"
    if args.latency_targets == "top":
        # the FLOPs family's latency grows faster than its FLOPs (resolution): doubling down from its top would put
        # stage 0 out of reach, so the growth is the FLOPs family's own latency ratio per stage
        growth = (rows[-1]["predicted_ms"] / rows[0]["predicted_ms"]) ** (1 / (len(rows) - 1))
        spec = f"{rows[-1]['predicted_ms']:.4f}ms"
        extra = ["--growth", f"{growth:.4f}"]
        spec_text = f"--target-latency {spec} --growth {growth:.4f}"
    else:
        spec = ",".join(f"{r['predicted_ms']:.4f}ms" for r in rows)
        extra = []
        spec_text = f"--target-latency {spec}"
    scalenas("search", *common, "--target-latency", spec, *extra, "--latency-table", str(table_path),
             "--lazy-latency", "--out", str(lat_dir))
    seconds["search latency"] = time.time() - t0
    table = LatencyTable.open(table_path, space, lazy=True)  # layers the search timed on demand, if any
    rows += family(lat_dir, table, space, "latency")

    t0 = time.time()
    time_members(space, rows, args.rounds, args.repeats, args.min_time, args.seed)
    seconds["timing"] = time.time() - t0
    for r in rows:
        del r["_subnet"]
    out = Path(args.out)
    jobkit.write_rows(out.with_suffix(".csv"), rows, COLUMNS)

    # matched latency: each family interpolated at the other's members inside its measured range
    points = compare(rows, "flops", "latency") + compare(rows, "latency", "flops")
    diffs = [p["latency_top1"] - p["flops_top1"] for p in points]
    seconds["total"] = time.time() - started
    noise = {}
    for name, folder in (("flops", flops_dir), ("latency", lat_dir)):
        best = json.loads((folder / "best.json").read_text())
        noise[name] = (best.get("fitness") or float("nan"), best.get("fitness_noise") or float("nan"))
    write_markdown(out.with_suffix(".md"), rows, points, diffs, args, space, format_flops(target), spec_text, seconds,
                   argv if argv is not None else sys.argv[1:], noise)
    print(out.with_suffix(".md").read_text())
    return 0


def write_markdown(path: Path, rows, points, diffs, args, space, target: str, spec: str, seconds, argv,
                   noise) -> None:
    from scalenas.io import atomic_write_text
    from scalenas.latency.timing import device_name, runtime_version

    lines = [f"# Latency-constrained vs FLOPs-constrained family ({space.name}, {time.strftime('%Y-%m-%d')})", "",
             f"Machine: {device_name('cpu')}, {os.cpu_count()} cores, Python {platform.python_version()}, "
             f"onnxruntime {runtime_version('onnxruntime')}; batch 1, one thread, the thread's CPU time; "
             f"load average at the end {os.getloadavg()[0]:.1f}.", "",
             "Command: `python jobs/bench/latency_evidence.py " + " ".join(argv) + "`", "",
             "Wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()) + ".", "",
             f"Searches: markov, population {args.population}, {args.generations} generations, {args.elites} elites, "
             f"seed {args.seed}, the default tolerance (±10 %); FLOPs family: top-stage target {target} (the demo's); "
             f"latency family: `{spec}` ({args.latency_targets}: "
             + ("the FLOPs family's predicted top-stage latency, and the growth per stage that its predicted "
                "latency has from stage 0 to the top (doubling from the top would put stage 0 out of reach)"
                if args.latency_targets == "top"
                else "the FLOPs family's predicted latency at every stage") + "). Members timed whole in "
             f"{args.rounds} interleaved rounds.", "",
             "| family | stage | FLOPs | target | feasible | predicted ms | measured ms | supernet top-1 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        tgt = (f"{r['target_flops'] / 1e6:.2f}M" if r["family"] == "flops" else f"{r['target_latency_ms']:.3f} ms")
        lines.append(f"| {r['family']} | {r['stage']} | {r['flops'] / 1e6:.2f}M | {tgt} | {r['feasible']} | "
                     f"{r['predicted_ms']:.3f} | {r['measured_ms']:.3f} | {r['supernet_top1']:.4f} |")
    lines += ["", "Search fitness (weighted mean of the members' supernet holdout top-1, ± its bootstrap noise): "
              + "; ".join(f"{k} family {v[0]:.4f} ± {v[1]:.4f}" for k, v in noise.items()) + "."]
    lines += ["", "At matched measured latency (the other family's supernet top-1 interpolated linearly in log "
              "measured latency, only inside its measured range):", "",
              "| at the member of | stage | measured ms | latency family top-1 | FLOPs family top-1 "
              "| latency − FLOPs |",
              "|---|---|---|---|---|---|"]
    for p in points:
        lines.append(f"| {p['at']} | {p['stage']} | {p['measured_ms']:.3f} | {p['latency_top1']:.4f} | "
                     f"{p['flops_top1']:.4f} | {p['latency_top1'] - p['flops_top1']:+.4f} |")
    if diffs:
        mean = float(np.mean(diffs))
        wins = sum(d > 0 for d in diffs)
        verdict = "the latency-constrained family" if mean > 0 else "the FLOPs-constrained family"
        lines += ["", f"**Mean difference (latency − FLOPs) over {len(diffs)} matched points: {100 * mean:+.2f} "
                  f"points of supernet top-1; the latency family is ahead at {wins} of {len(diffs)}.** On this run "
                  f"{verdict} is the more accurate at the same measured latency, by that margin (the searches' fitness "
                  f"noise, above, is ±{100 * max(v[1] for v in noise.values()):.2f} points)."]
    else:
        lines += ["", "**No matched points: the two families' measured latencies do not overlap.**"]
    lines += ["", "Rows: " + path.with_suffix(".csv").name + ". Standalone top-1 of the members: not measured "
              "(training them did not fit the run's time)."]
    atomic_write_text(path, "\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
