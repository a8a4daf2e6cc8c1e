"""Evidence: do searched families hold up when their members are trained from scratch? (digits, CPU)

From a finished demo/search run (``scalenas demo`` or ``train-supernet`` + ``search``), this script

1. runs the ``compound`` baseline search (EfficientNet scaling) on the same supernet with the same FLOPs targets,
   tolerance and population/generations, unless ``RUN/search-compound`` already holds a finished one;
2. retrains from scratch, with the standalone recipe (``scalenas train``: same data split, SGD + Nesterov,
   warm-up + cosine, label smoothing), every member (stages 0..S) of the markov family and of the compound
   family, once per seed;
3. trains ``--subnets`` subnets sampled from the markov search's ``pareto.csv`` (spread over stages and, within a
   stage, over the supernet top-1 range) and computes Kendall's tau between their supernet top-1 and their
   standalone top-1 (both on the holdout split);
4. writes ``results/family_digits.csv`` (one row per trained model) and ``results/family_digits.md`` (summary),
   and a ``standalone.csv`` into each search folder so ``scalenas report`` shows the standalone top-1.

Budget flags: ``--steps`` (per model), ``--seeds``, ``--subnets``, ``--jobs`` (parallel trainings, one torch thread
each). The defaults are sized for ~10-15 minutes on 2 CPU cores. Trained models are cached under
``RUN/family_digits/`` by (architecture, seed, steps), so a rerun (or an interrupted run) reuses finished ones.

    python jobs/family_digits.py --run results/runs/RUN                       # the evidence
    python jobs/family_digits.py --steps 5 --seeds 1 --subnets 3 --out-csv /tmp/f.csv --out-md /tmp/f.md  # smoke
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default=None,
                   help="demo/training run holding a markov search, or the search folder (default: the newest)")
    p.add_argument("--steps", type=int, default=120, help="training steps per model (default 120)")
    p.add_argument("--batch-size", type=int, default=128, help="batch size (default 128, the recipe's)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per family member (default 3)")
    p.add_argument("--subnets", type=int, default=12, help="pareto.csv subnets for Kendall tau (default 12)")
    p.add_argument("--jobs", type=int, default=2, help="trainings in parallel, 1 torch thread each (default 2)")
    p.add_argument("--workers", type=int, default=None, help="Ray workers of the compound search (default: "
                   "scalenas search's)")
    p.add_argument("--out-csv", default=str(REPO / "results" / "family_digits.csv"))
    p.add_argument("--out-md", default=str(REPO / "results" / "family_digits.md"))
    args = p.parse_args(argv)
    for name in ("steps", "batch_size", "seeds", "jobs"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.subnets < 0:
        p.error("--subnets must be >= 0")
    return args


# ------------------------------------------------------------------------------------------ inputs
def supernet_of(search: Path) -> Path:
    """The supernet checkpoint a search used (search_config.json; relative paths tried from the run too)."""
    from scalenas.train.checkpoint import CKPT_NAME

    try:
        given = Path(json.loads((search / "search_config.json").read_text())["supernet"])
    except (OSError, json.JSONDecodeError, KeyError):
        given = None
    for cand in (given, search.parent / CKPT_NAME):
        if cand is not None and cand.is_file():
            return cand
    sys.exit(f"family_digits: cannot find the supernet checkpoint of {search} (search_config.json or "
             f"{search.parent / CKPT_NAME})")


def ensure_compound(search: Path, ckpt: Path, workers: int | None) -> Path:
    """RUN/search-compound, searched now with the markov search's targets and budget if not there yet."""
    from scalenas.cli.main import main

    out = search.parent / "search-compound"
    state = out / "state.json"
    if state.is_file() and json.loads(state.read_text()).get("done"):
        return out
    cfg = json.loads((search / "search_config.json").read_text())
    opts = cfg.get("options", {})
    argv = ["search", "--supernet", str(ckpt), "--strategy", "compound", "--out", str(out),
            "--target-flops", ",".join(str(t) for t in cfg["targets"]),
            "--flops-tolerance", str(opts.get("tolerance", 0.1)),
            "--population", str(opts.get("population", 16)), "--generations", str(opts.get("generations", 10)),
            "--elites", str(opts.get("elites", 4)), "--seed", str(opts.get("seed", 0)), "--no-progress"]
    if state.is_file():
        argv.append("--resume")
    if workers is not None:
        argv += ["--workers", str(workers)]
    print(f"compound baseline search -> {out}", flush=True)
    if main(argv) != 0:
        sys.exit("family_digits: the compound search failed")
    return out


def sample_pareto(search: Path, n: int, seed: int = 0) -> list[dict]:
    """``n`` unique evaluated subnets of pareto.csv, round-robin over stages, spread over top-1 within a stage."""
    import numpy as np
    import pandas as pd

    if n == 0:
        return []
    frame = pd.read_csv(search / "pareto.csv").dropna(subset=["top1"]).drop_duplicates("arch")
    stages = sorted(frame["stage"].unique())
    quota = {s: n // len(stages) + (1 if k < n % len(stages) else 0) for k, s in enumerate(stages)}
    picked = []
    for s in stages:
        grp = frame[frame["stage"] == s].sort_values(["top1", "arch"])
        k = min(quota[s], len(grp))
        if k:
            idx = np.unique(np.round(np.linspace(0, len(grp) - 1, k)).astype(int))
            picked += grp.iloc[idx].to_dict("records")
    if len(picked) < n:  # small stages: fill from the rest, seeded
        rest = frame[~frame["arch"].isin([p["arch"] for p in picked])]
        picked += rest.sample(min(n - len(picked), len(rest)), random_state=seed).to_dict("records")
    return picked


# ------------------------------------------------------------------------------------------ training
def _key(arch: str, seed: int, steps: int, batch: int) -> str:
    return f"{hashlib.sha1(arch.encode()).hexdigest()[:12]}-seed{seed}-steps{steps}-b{batch}"


def train_one(task: dict) -> dict:
    """Train (or reuse / resume) one standalone model; runs in a worker process."""
    import torch

    from scalenas.train.config import load_job
    from scalenas.train.standalone import RESULT_NAME, TRAIN_CKPT_NAME, train_standalone

    torch.set_num_threads(task["threads"])
    out = Path(task["out_dir"])
    if (out / RESULT_NAME).is_file():
        return json.loads((out / RESULT_NAME).read_text())
    cfg = load_job("digits", task["overrides"])
    resume = (out / TRAIN_CKPT_NAME).is_file()
    summary = train_standalone(cfg, None if resume else task["arch"], out_dir=out, resume=resume, progress=False)
    if not summary["finished"]:
        raise KeyboardInterrupt
    return summary["result"]


def run_tasks(tasks: list[dict], jobs: int) -> list[dict]:
    t0 = time.perf_counter()
    results: list[dict | None] = [None] * len(tasks)

    def done(i: int, res: dict) -> None:
        results[i] = res
        finished = sum(r is not None for r in results)
        t = tasks[i]
        print(f"  [{finished}/{len(tasks)}] {t['label']}: holdout {res['holdout_top1']:.4f} test "
              f"{res['test_top1']:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)

    if jobs == 1:
        for i, t in enumerate(tasks):
            done(i, train_one(t))
    else:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(train_one, t): i for i, t in enumerate(tasks)}
            from concurrent.futures import as_completed

            for f in as_completed(futures):
                done(futures[f], f.result())
    return results  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------ summary
def _mean_std(values) -> str:
    import numpy as np

    v = np.asarray([x for x in values if x == x], dtype=float)
    if v.size == 0:
        return "-"
    return f"{v.mean():.4f} ± {v.std(ddof=1):.4f} (n={v.size})" if v.size > 1 else f"{v.mean():.4f} (n=1)"


def write_summary(frame, tau, settings: dict, path: Path) -> None:
    from scalenas.spaces.targets import format_flops

    lines = ["# Searched family vs the compound baseline, trained from scratch (digits)", "",
             f"Generated by `jobs/family_digits.py` on {time.strftime('%Y-%m-%d %H:%M')}; "
             f"wall time {settings['wall_s']:.0f} s. FLOPs = fvcore MACs (1 multiply-add = 1 FLOP), batch 1.", "",
             "Settings: " + ", ".join(f"{k} `{v}`" for k, v in settings.items() if k != "wall_s"), "",
             "## Standalone top-1 per stage (mean ± std over seeds)", "",
             "| stage | markov FLOPs | markov holdout | markov test | markov supernet | compound FLOPs | "
             "compound holdout | compound test | compound supernet |",
             "|---|---|---|---|---|---|---|---|---|"]
    fam = frame[frame["strategy"].isin(["markov", "compound"])]
    for stage in sorted(fam["stage"].unique()):
        cells = [str(stage)]
        for strat in ("markov", "compound"):
            g = fam[(fam["strategy"] == strat) & (fam["stage"] == stage)]
            if g.empty:
                cells += ["-"] * 4
                continue
            sn = g["supernet_top1"].iloc[0]
            cells += [format_flops(g["flops"].iloc[0]), _mean_std(g["standalone_holdout_top1"]),
                      _mean_std(g["standalone_test_top1"]), "-" if sn != sn else f"{sn:.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    for strat in ("markov", "compound"):
        g = fam[fam["strategy"] == strat]
        if not g.empty:
            lines.append("")
            lines.append(f"{strat}: mean standalone test top-1 over stages "
                         f"{g.groupby('stage')['standalone_test_top1'].mean().mean():.4f}")
    lines += ["", "## Supernet ranking vs standalone ranking", ""]
    if tau is None:
        lines.append("Not computed (fewer than 2 subnets).")
    else:
        lines.append(f"Kendall tau between supernet holdout top-1 and standalone holdout top-1 over {tau['n']} "
                     f"subnets sampled from pareto.csv (spread over stages): **tau = {tau['tau']:.3f}** "
                     f"(p = {tau['p']:.3g}).")
        if tau["n"] < 12:
            lines.append("")
            lines.append(f"Only {tau['n']} subnets: a smoke run, not evidence (the evidence uses >= 12).")
    lines += ["", "Rows: `family_digits.csv` (strategy, stage, seed, flops, params, standalone holdout/test top-1, "
              "supernet top-1, arch)."]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import pandas as pd
    from scipy.stats import kendalltau

    from scalenas.train.checkpoint import read_checkpoint
    from scalenas.report.family import read_search
    from scalenas.runs import find_search_dir
    from scalenas.errors import ScalenasError
    from scalenas.io import atomic_write_csv

    t0 = time.perf_counter()
    try:
        search = find_search_dir(args.run)
        if search.name == "search-compound":
            sys.exit(f"family_digits: {search} is the compound baseline; give the run or its markov search")
        read_search(search)
    except ScalenasError as exc:
        sys.exit(f"family_digits: {exc}")
    run_dir = search.parent
    ckpt = supernet_of(search)
    sn_cfg = read_checkpoint(ckpt).get("config", {})
    overrides = {"steps": args.steps, "batch_size": args.batch_size, "threads": None,
                 "data": sn_cfg.get("data", "digits"),
                 "data_seed": sn_cfg.get("data_seed", sn_cfg.get("seed", 0)),
                 "holdout_frac": sn_cfg.get("holdout_frac", 0.15), "test_frac": sn_cfg.get("test_frac", 0.15),
                 "store_size": sn_cfg.get("store_size"), "checkpoint_every": max(50, args.steps // 4)}
    print(f"markov search {search}; supernet {ckpt}; {args.steps} steps x batch {args.batch_size}, "
          f"{args.seeds} seed(s), {args.subnets} tau subnets, {args.jobs} job(s)", flush=True)
    compound = ensure_compound(search, ckpt, args.workers)

    cache = run_dir / "family_digits"
    threads = 1 if args.jobs > 1 else max(1, (os.cpu_count() or 1))
    tasks, meta = [], []

    def add(strategy: str, stage: int, seed: int, row: dict) -> None:
        arch = row["arch"]
        tasks.append({"arch": arch, "threads": threads, "label": f"{strategy} s{stage} seed {seed}",
                      "out_dir": str(cache / _key(arch, seed, args.steps, args.batch_size)),
                      "overrides": {**{k: v for k, v in overrides.items() if v is not None}, "seed": seed}})
        meta.append({"strategy": strategy, "stage": stage, "seed": seed, "supernet_top1": row.get("top1"),
                     "arch": arch})

    for strategy, folder in (("markov", search), ("compound", compound)):
        best = json.loads((folder / "best.json").read_text())
        for row in best["family"]:
            for seed in range(args.seeds):
                add(strategy, int(row["stage"]), seed, row)
    for row in sample_pareto(search, args.subnets):
        add("pareto-sample", int(row["stage"]), 0, row)
    # identical (arch, seed) tasks are trained once
    unique: dict[str, int] = {}
    for i, t in enumerate(tasks):
        unique.setdefault(t["out_dir"], i)
    todo = [tasks[i] for i in sorted(set(unique.values()))]
    print(f"training {len(todo)} model(s) ({len(tasks)} rows) into {cache}", flush=True)
    done = dict(zip((t["out_dir"] for t in todo), run_tasks(todo, args.jobs)))

    rows = []
    for t, m in zip(tasks, meta):
        r = done[t["out_dir"]]
        rows.append({"strategy": m["strategy"], "stage": m["stage"], "seed": m["seed"], "flops": r["flops"],
                     "params": r["params"], "standalone_holdout_top1": r["holdout_top1"],
                     "standalone_test_top1": r["test_top1"], "supernet_top1": m["supernet_top1"],
                     "steps": r["steps"], "arch": m["arch"], "run_dir": t["out_dir"]})
    frame = pd.DataFrame(rows)
    atomic_write_csv(Path(args.out_csv), frame)
    for strategy, folder in (("markov", search), ("compound", compound)):
        g = frame[frame["strategy"] == strategy]
        sa = g.rename(columns={"standalone_holdout_top1": "holdout_top1", "standalone_test_top1": "test_top1"})
        atomic_write_csv(folder / "standalone.csv", sa[["arch", "stage", "seed", "holdout_top1", "test_top1",
                                                        "steps", "run_dir"]])

    tau_rows = frame[frame["strategy"] == "pareto-sample"].dropna(subset=["supernet_top1"])
    tau = None
    if len(tau_rows) >= 2:
        res = kendalltau(tau_rows["supernet_top1"], tau_rows["standalone_holdout_top1"])
        tau = {"tau": float(res.statistic), "p": float(res.pvalue), "n": len(tau_rows)}
    settings = {"run": str(run_dir), "supernet": str(ckpt), "steps": args.steps, "batch_size": args.batch_size,
                "seeds": args.seeds, "subnets": args.subnets, "data": overrides["data"],
                "data_seed": overrides["data_seed"], "wall_s": time.perf_counter() - t0}
    write_summary(frame, tau, settings, Path(args.out_md))
    print(Path(args.out_md).read_text())
    print(f"wrote {args.out_csv} and {args.out_md}; standalone.csv in {search} and {compound} "
          f"({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
