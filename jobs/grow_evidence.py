"""Evidence: does growing each family member from the trained previous one beat training it from scratch? (CPU)

Everything trains through ``scalenas train``'s library (:func:`scalenas.train.standalone.train_standalone`,
one training loop; AdamW for the ViT through the same loop), on the search folder of a ``scalenas demo`` /
``scalenas search`` + ``scalenas extrapolate`` run (searched members s0..S and extrapolated ones), per seed:

(a) member s4 grown from the trained s3 (``grow_to``: function-preserving width + depth) and trained E steps,
    vs s4 from scratch for E and for 3E steps;
(b) the whole family grown: s0 from scratch for 3E steps (the root: the same run as scratch-3E's s0), then each
    next member grown from the trained previous one and trained E steps, vs every member from scratch for 3E;
    test top-1 per member and total training compute (block-steps = IR blocks x steps, and wall seconds);
(c) the ViT made 2x deeper (``scalenas grow --depth 2x``: shared layers + adapters) and trained E steps, vs the
    unshared 12-block ViT from scratch for E and for 3E steps (the 6-block original trains E steps first).

Writes ``results/grow_evidence.csv`` (one row per trained model) and ``results/grow_evidence.md``.

    python jobs/grow_evidence.py --search results/runs/RUN/search           # the evidence (3 seeds)
    python jobs/grow_evidence.py --search S --steps 3 --vit-steps 3 --seeds 1 --out-csv /tmp/g.csv --out-md /tmp/g.md
"""
from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))  # jobs/: jobkit
import jobkit  # noqa: E402  (puts the checkout and jobs/ on sys.path)
REPO = jobkit.REPO

from scalenas.io import atomic_write_csv, atomic_write_text, seed_everything  # noqa: E402
from scalenas.models.grow import grow  # noqa: E402
from scalenas.models.registry import load_model, save_model  # noqa: E402
from scalenas.models.vit import ViT  # noqa: E402
from scalenas.runs import RunFolder  # noqa: E402
from scalenas.train.config import FOLLOW_KEYS, follow_overrides, followed_record, load_job  # noqa: E402
from scalenas.train.family import train_family  # noqa: E402
from scalenas.train.standalone import RESULT_NAME, train_or_reuse  # noqa: E402

COMMON = {"data": "digits", "data_seed": 0, "threads": 1, "device": "cpu", "log_every": 10}


def recipe(steps: int, seed: int, batch: int, **extra) -> dict:
    return {**COMMON, "steps": steps, "batch_size": batch, "seed": seed, "warmup_steps": max(1, steps // 10),
            "checkpoint_every": max(50, steps), **extra}


def family_rows(rows, variant, seed):
    return [{"model": "cnn", "variant": variant, "seed": seed, "stage": r["stage"], "kind": r["kind"],
             "steps": r["steps"], "holdout_top1": r["holdout_top1"], "test_top1": r["test_top1"],
             "block_steps": r["block_steps"], "train_s": r["train_seconds"], "init": r["init"],
             "run_dir": r["run_dir"]} for r in rows]


def family_recipe(search: Path, steps: int, seed: int, batch: int) -> dict:
    """The CNN family's recipe on the data the search's supernet trained on (its data record), not a fixed one."""
    base = recipe(steps, seed, batch)
    record = followed_record(search)[0]
    return base if record is None else follow_overrides(record, {k: v for k, v in base.items() if k not in FOLLOW_KEYS})


def run_cnn(search: Path, cache: Path, e: int, batch: int, seed: int) -> list[dict]:
    out = []
    scratch3 = train_family(search, load_job("digits", family_recipe(search, 3 * e, seed, batch)), grow=False,
                            progress=False,
                            out_dir=cache / f"scratch3E-seed{seed}")
    out += family_rows(scratch3, "scratch_3E", seed)
    grown_dir = cache / f"grown-seed{seed}"
    s0 = Path(scratch3[0]["run_dir"])
    if not (grown_dir / s0.name / RESULT_NAME).is_file():  # the root member: the scratch-3E run itself
        shutil.copytree(s0, grown_dir / s0.name, dirs_exist_ok=True)
    grown = train_family(search, load_job("digits", family_recipe(search, e, seed, batch)), grow=True, progress=False,
                         out_dir=grown_dir)
    out += family_rows(grown, "grown", seed)
    stages = [r["stage"] for r in grown]
    probe = 4 if 4 in stages else stages[-1]
    scratch1 = train_family(search, load_job("digits", family_recipe(search, e, seed, batch)), grow=False,
                            stages=[probe], progress=False, out_dir=cache / f"scratchE-seed{seed}")
    out += family_rows(scratch1, "scratch_E", seed)
    return out


def _train_vit(model, out: Path, steps: int, seed: int, batch: int, lr: float) -> dict:
    init = out.parent / f"{out.name}-init.pt"
    if model is not None and not (out / RESULT_NAME).is_file():
        save_model(init, model)
    cfg = load_job("digits", recipe(steps, seed, batch, optimizer="adamw", lr=lr))
    return train_or_reuse(cfg, str(init), None, out)[0]


def run_vit(cache: Path, e: int, batch: int, lr: float, seed: int) -> list[dict]:
    rows = []

    def row(variant, res, blocks, steps, cum_block_steps):
        rows.append({"model": "vit", "variant": variant, "seed": seed, "stage": None, "kind": "vit",
                     "steps": steps, "holdout_top1": res["holdout_top1"], "test_top1": res["test_top1"],
                     "block_steps": cum_block_steps, "train_s": res["train_seconds"], "init": res["init"],
                     "run_dir": str(cache / f"vit-{variant}-seed{seed}"), "params": res["params"],
                     "blocks": blocks})

    seed_everything(seed)
    orig = _train_vit(ViT(depth=6), cache / f"vit-original-seed{seed}", e, seed, batch, lr)
    row("original", orig, 6, e, 6 * e)
    grown_model = grow(load_model(cache / f"vit-original-seed{seed}" / RunFolder.FINAL), "2x")
    res = _train_vit(grown_model, cache / f"vit-grown-seed{seed}", e, seed, batch, lr)
    row("grown", res, 12, e, 6 * e + 12 * e)
    for variant, steps in (("scratch_E", e), ("scratch_3E", 3 * e)):
        seed_everything(seed)
        res = _train_vit(ViT(depth=12), cache / f"vit-{variant}-seed{seed}", steps, seed, batch, lr)
        row(variant, res, 12, steps, 12 * steps)
    return rows


def _ms(v, digits=4) -> str:
    v = np.asarray([x for x in v if x is not None], dtype=float)
    if v.size == 0:
        return "-"
    return f"{v.mean():.{digits}f}" if v.size == 1 else f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def summary(frame: pd.DataFrame, args, wall: float) -> str:
    lines = ["# Growing family members vs training them from scratch (digits, CPU)", "",
             f"Generated by `python jobs/grow_evidence.py {' '.join(sys.argv[1:])}` in {wall:.0f} s; seeds "
             f"0..{args.seeds - 1}; CNN E = {args.steps} steps of {args.batch} (SGD + Nesterov, lr 0.2); ViT "
             f"E = {args.vit_steps} steps of {args.vit_batch} (AdamW lr {args.vit_lr:g}, decay 0.05); warm-up 10 % "
             "then cosine; one data split (data_seed 0). Compute = block-steps (blocks x steps; a grown member's "
             "count includes nothing of its ancestors) and wall seconds of the training loop.", ""]
    cnn = frame[frame["model"] == "cnn"]
    if not cnn.empty:
        lines += ["## (b) The family: grown (each member E steps after the previous) vs scratch 3E", "",
                  "| stage | kind | grown test top-1 | scratch 3E test top-1 | grown - scratch 3E (points) |",
                  "|---|---|---|---|---|"]
        worst = None
        for stage, g in cnn[cnn["variant"].isin(["grown", "scratch_3E"])].groupby("stage"):
            a = g[g["variant"] == "grown"].set_index("seed")["test_top1"]
            b = g[g["variant"] == "scratch_3E"].set_index("seed")["test_top1"]
            d = 100 * (a - b).dropna()
            worst = d.mean() if worst is None else min(worst, d.mean())
            lines.append(f"| s{int(stage)} | {g['kind'].iloc[0]} | {_ms(a)} | {_ms(b)} | {_ms(d, 2)} |")
        comp = cnn.groupby(["variant", "seed"])[["block_steps", "train_s"]].sum().groupby("variant").mean()
        if {"grown", "scratch_3E"} <= set(comp.index):
            ratio = comp.loc["grown", "block_steps"] / comp.loc["scratch_3E", "block_steps"]
            wratio = comp.loc["grown", "train_s"] / comp.loc["scratch_3E", "train_s"]
            lines += ["", f"Total compute, grown / scratch 3E: **{100 * ratio:.0f} % of the block-steps**, "
                      f"{100 * wratio:.0f} % of the wall time (target <= 50 %). Worst member: grown - scratch 3E = "
                      f"{worst:+.2f} points (target >= -0.3).", ""]
        a4 = cnn[cnn["variant"] == "scratch_E"]
        if not a4.empty:
            st = int(a4["stage"].iloc[0])
            g = cnn[cnn["stage"] == st]
            lines += [f"## (a) Member s{st}: grown from the trained s{st - 1} + E vs scratch E and 3E", "",
                      "| variant | test top-1 | holdout top-1 |", "|---|---|---|"]
            for variant in ("grown", "scratch_E", "scratch_3E"):
                v = g[g["variant"] == variant]
                lines.append(f"| {variant} | {_ms(v['test_top1'])} | {_ms(v['holdout_top1'])} |")
            lines.append("")
    vit = frame[frame["model"] == "vit"]
    if not vit.empty:
        lines += ["## (c) ViT 6 -> 12 blocks: grown (shared layers + adapters) + E vs unshared 12 blocks", "",
                  "| variant | params | test top-1 | holdout top-1 | cumulative block-steps |", "|---|---|---|---|---|"]
        for variant in ("original", "grown", "scratch_E", "scratch_3E"):
            v = vit[vit["variant"] == variant]
            if not v.empty:
                lines.append(f"| {variant} | {int(v['params'].iloc[0]):,} | {_ms(v['test_top1'])} | "
                             f"{_ms(v['holdout_top1'])} | {int(v['block_steps'].iloc[0]):,} |")
        a = vit[vit["variant"] == "grown"].set_index("seed")["test_top1"]
        b = vit[vit["variant"] == "scratch_3E"].set_index("seed")["test_top1"]
        lines += ["", f"grown - scratch 3E: {_ms(100 * (a - b).dropna(), 2)} points (target > 0).", ""]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = jobkit.parser(__doc__)
    p.add_argument("--search", required=True, help="search folder with extrapolated members (family.csv)")
    p.add_argument("--steps", type=int, default=60, help="CNN E in steps (default 60)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--vit-steps", type=int, default=150, help="ViT E in steps (default 150)")
    p.add_argument("--vit-batch", type=int, default=64)
    p.add_argument("--vit-lr", type=float, default=3e-3)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--models", default="cnn,vit")
    p.add_argument("--cache", default=str(REPO / "results" / "runs" / "grow_evidence"))
    p.add_argument("--out-csv", default=str(REPO / "results" / "grow_evidence.csv"))
    p.add_argument("--out-md", default=str(REPO / "results" / "grow_evidence.md"))
    args = p.parse_args(argv)
    for name in ("steps", "batch", "vit_steps", "vit_batch", "seeds"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    cache = Path(args.cache)
    t0 = time.perf_counter()
    rows: list[dict] = []
    for seed in range(args.seeds):
        if "cnn" in models:
            rows += run_cnn(Path(args.search), cache / f"cnn-E{args.steps}-b{args.batch}", args.steps, args.batch,
                            seed)
        if "vit" in models:
            rows += run_vit(cache / f"vit-E{args.vit_steps}-b{args.vit_batch}", args.vit_steps, args.vit_batch,
                            args.vit_lr, seed)
        print(f"seed {seed} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    frame = pd.DataFrame(rows)
    atomic_write_csv(args.out_csv, frame)
    text = summary(frame, args, time.perf_counter() - t0)
    atomic_write_text(args.out_md, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
