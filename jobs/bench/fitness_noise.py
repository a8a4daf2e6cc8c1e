"""How noisy is the search's fitness, and which metric ranks subnets like standalone training?

For the subnets of a ``jobs/bench/supernet_quality.py`` run (its ``*_subnets.csv``) and one of its supernets:
the holdout bootstrap standard error of top-1 and log-loss (what ``search_log.csv`` reports as ``fitness_noise``),
and the spread over ``--draws`` BN-calibration draws (different seeded calibration batches); then Kendall tau of
supernet top-1 and of supernet -loss against standalone holdout top-1. Writes results/bench/fitness_noise.csv and .md.

  python jobs/bench/fitness_noise.py --supernet results/runs/supernet_quality/supernets/sn-XXXX/checkpoint.pt \\
      --subnets results/bench/supernet_quality_subnets.csv --recipe base
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
from scipy.stats import kendalltau

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # jobs/: jobkit
import jobkit  # noqa: E402  (puts the checkout and jobs/ on sys.path)
REPO = jobkit.REPO

from scalenas.io import atomic_write_csv, atomic_write_text  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = jobkit.parser(__doc__)
    ap.add_argument("--supernet", required=True, help="checkpoint.pt of the supernet")
    ap.add_argument("--subnets", default=str(REPO / "results/bench/supernet_quality_subnets.csv"))
    ap.add_argument("--recipe", default="base", help="which recipe's rows of the subnets CSV")
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--limit", type=int, default=8, help="subnets measured for the calibration-draw spread")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(REPO / "results/bench/fitness_noise"))
    args = ap.parse_args(argv)

    import torch

    from scalenas.search.fitness import SupernetEvaluator

    torch.set_num_threads(args.threads)
    rows = pd.read_csv(args.subnets)
    rows = rows[rows["recipe"] == args.recipe].reset_index(drop=True)
    if rows.empty:
        raise SystemExit(f"{args.subnets}: no rows of recipe {args.recipe!r}")
    ev = SupernetEvaluator(args.supernet)
    out = []
    for i, r in rows.iterrows():
        m = ev.evaluate(r["arch"])
        rec = {"subnet": r["subnet"], "stage": int(r["stage"]), "top1": m["top1"], "top1_se": m["top1_se"],
               "loss": m["loss"], "loss_se": m["loss_se"], "n": m["n"], "standalone_top1": r["standalone_top1"]}
        if i < args.limit:
            c = ev.calibration_noise(r["arch"], draws=args.draws)
            rec.update(calib_top1_sd=c["top1_sd"], calib_loss_sd=c["loss_sd"])
        out.append(rec)
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rec.items()}), flush=True)
    df = pd.DataFrame(out)
    atomic_write_csv(Path(args.out + ".csv"), df)
    tau_top1 = kendalltau(df["top1"], df["standalone_top1"])
    tau_loss = kendalltau(-df["loss"], df["standalone_top1"])
    spread_top1 = float(df["top1"].std())
    spread_loss = float(df["loss"].std())
    lines = [
        "# Fitness noise and the choice of metric",
        "",
        f"Command: `python jobs/bench/fitness_noise.py --supernet {args.supernet} --recipe {args.recipe} "
        f"--draws {args.draws}`; {len(df)} subnets, holdout of {int(df['n'].iloc[0])} images.",
        "",
        "| metric | bootstrap se (median) | BN-calibration sd (median) | spread over subnets (sd) | "
        "noise / spread | Kendall tau vs standalone (p) |",
        "|---|---|---|---|---|---|",
        f"| top-1 | {df['top1_se'].median():.4f} | {df['calib_top1_sd'].median():.4f} | {spread_top1:.4f} | "
        f"{df['top1_se'].median() / spread_top1:.2f} | {tau_top1.statistic:.3f} ({tau_top1.pvalue:.2g}) |",
        f"| log-loss | {df['loss_se'].median():.4f} | {df['calib_loss_sd'].median():.4f} | {spread_loss:.4f} | "
        f"{df['loss_se'].median() / spread_loss:.2f} | {tau_loss.statistic:.3f} ({tau_loss.pvalue:.2g}) |",
        "",
        "The search treats fitness differences below the measured noise as ties (won by the family nearest its "
        "FLOPs targets; --tie-break cheaper: the cheaper one).",
    ]
    atomic_write_text(Path(args.out + ".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
