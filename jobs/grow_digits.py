"""Evidence: is a model grown 2x deeper with shared layers better than the same deeper model from scratch? (digits, CPU)

For the default ViT (6 blocks -> 12) and one digits-tiny CNN (9 blocks, 6 of them stride-1 and width-preserving,
-> 15), once per seed, on one data split of the embedded digits:

(a) ``original``: the original model from scratch for E steps;
(b) ``grown``: (a)'s trained weights grown 2x with ``scalenas grow --depth 2x`` (stacked order, default parallel
    adapters, default rank), then fine-tuned for E steps (every parameter trains);
(c) ``scratch_E`` / ``scratch_3E``: the same 2x-deep architecture as an ordinary, *unshared* model, freshly
    initialised and trained for E and for 3E steps. For the ViT that is a ViT of depth 12; for the CNN it is the
    subnet with depth multiplier 1.5, whose blocks are exactly the grown layout (same ops, widths and strides per
    position, e.g. stage 1 ``[k3,k5,k5,k5,k5]``), checked below; it has no adapters and no sharing.

Recipes (pinned here, so edits of jobs/digits.yaml do not change the evidence):

* CNN: ``scalenas train``'s own trainer (:func:`scalenas.train.standalone.train_standalone`): SGD + Nesterov
  (momentum 0.9), weight decay 4e-5 off BN/biases, linear warm-up (10 % of the run) + cosine, label smoothing 0.1,
  random shifts; lr 0.2, batch 128.
* ViT: the same data, batches, shifts, warm-up + cosine schedule and label smoothing, but **AdamW** (lr 3e-3,
  weight decay 0.05 off norms/biases/position/class tokens, batch 64) in a loop of this script: ``scalenas
  train`` only has SGD, and SGD barely moves this ViT on a short budget (measured on digits, seed 0: SGD lr 0.05,
  300 steps of 128: 37 % test top-1; lr 0.2, 100 steps: 13 %; AdamW 3e-3, 300 steps of 128: 87 %). The runs are
  written in the same layout (result.json, train_log.csv, final.pt loadable by ``modelio.load_model``).

It writes ``results/grow_digits.csv`` (one row per trained model) and ``results/grow_digits.md`` (mean ± std over
seeds, paired differences (b) - (c), parameter overheads with shared tensors counted once, including the
overhead of ``--depth 2x`` with the default rank on the default ViT). Run folders are cached under
``results/runs/grow_digits/`` by (model, variant, seed, steps, batch), so a rerun reuses finished trainings.

Budget flags: ``--vit-steps`` / ``--cnn-steps`` (E per model), ``--seeds``, ``--jobs`` (trainings in parallel, 1
torch thread each). The defaults (ViT E = 300 steps of 64, CNN E = 50 steps of 128; 3 seeds; 2 jobs) need about
1,500 CPU-seconds of training, i.e. ~13-15 minutes on 2 otherwise idle cores.

    python jobs/grow_digits.py                                                    # the evidence
    python jobs/grow_digits.py --vit-steps 4 --cnn-steps 4 --seeds 1 --out-csv /tmp/g.csv --out-md /tmp/g.md  # smoke
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# The CNN: a digits-tiny base network with 9 blocks; the stride-2 first blocks of stages 1 and 2 and the
# width-changing first block of stage 3 are never duplicated, the other 6 are, so 2x gives 15 blocks.
# Within each stage the last two ops are equal, so the stacked grown layout [0,1,2,1,2] uses the same ops as the
# unshared depth-1.5 subnet (added layers repeat a stage's last base op): the two 15-block networks match.
CNN_BASE = [["ir_k3"], ["ir_k3", "ir_k5", "ir_k5"], ["ir_k5", "ir_k3", "ir_k3"], ["ir_k3", "ir_k5"]]
CNN_ORIG = {"space": "digits-tiny", "base": CNN_BASE, "depth": 1.0, "width": 1.0, "resolution": 16}
CNN_DEEP = {**CNN_ORIG, "depth": 1.5}
VARIANTS = ("original", "grown", "scratch_E", "scratch_3E")
LABELS = {"original": "(a) original, scratch, E", "grown": "(b) grown 2x from (a), fine-tuned E",
          "scratch_E": "(c) 2x-deep unshared, scratch, E", "scratch_3E": "(c) 2x-deep unshared, scratch, 3E"}
# Recipe keys shared by both models (the TrainConfig defaults / jobs/digits.yaml of the time, pinned).
COMMON = {"data": "digits", "data_seed": 0, "holdout_frac": 0.15, "test_frac": 0.15, "augment": True,
          "label_smoothing": 0.1, "threads": 1, "device": "cpu", "log_every": 10}
CNN_RECIPE = {"lr": 0.2, "momentum": 0.9, "nesterov": True, "weight_decay": 4e-5}
VIT_WEIGHT_DECAY = 0.05


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vit-steps", type=int, default=300, help="ViT E in steps (default 300)")
    p.add_argument("--vit-batch", type=int, default=64, help="ViT batch size (default 64)")
    p.add_argument("--vit-lr", type=float, default=3e-3, help="ViT AdamW peak lr (default 3e-3)")
    p.add_argument("--cnn-steps", type=int, default=50, help="CNN E in steps (default 50)")
    p.add_argument("--cnn-batch", type=int, default=128, help="CNN batch size (default 128)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per variant (default 3)")
    p.add_argument("--jobs", type=int, default=2, help="trainings in parallel, 1 torch thread each (default 2)")
    p.add_argument("--models", default="vit,cnn", help="comma list of vit, cnn (default both)")
    p.add_argument("--cache", default=str(REPO / "results" / "runs" / "grow_digits"),
                   help="run folders (default results/runs/grow_digits)")
    p.add_argument("--out-csv", default=str(REPO / "results" / "grow_digits.csv"))
    p.add_argument("--out-md", default=str(REPO / "results" / "grow_digits.md"))
    args = p.parse_args(argv)
    for name in ("vit_steps", "vit_batch", "cnn_steps", "cnn_batch", "seeds", "jobs"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if not args.vit_lr > 0:
        p.error("--vit-lr must be > 0")
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not args.models or any(m not in ("vit", "cnn") for m in args.models):
        p.error("--models takes a comma list of vit, cnn")
    return args


# ------------------------------------------------------------------------------------------ architectures
def check_cnn_layout() -> None:
    """The grown CNN and the unshared depth-1.5 CNN must have the same blocks, position by position."""
    from scalenas.models.grow import grow
    from scalenas.models.standalone import StandaloneNet

    grown = grow(StandaloneNet.from_subnet("digits-tiny", CNN_ORIG), "2x", adapter="none")
    deep = StandaloneNet.from_subnet("digits-tiny", CNN_DEEP)

    def sig(stages):
        return [[(b.kernel, b.stride, b.in_channels, b.out_channels, b.residual) for b in st] for st in stages]

    if sig(grown.model.stages) != sig(deep.stages):
        sys.exit(f"grow_digits: the unshared 2x-deep CNN does not match the grown layout:\n"
                 f"  grown {sig(grown.model.stages)}\n  deep  {sig(deep.stages)}")


# ------------------------------------------------------------------------------------------ training
def fresh_vit_file(task: dict, path: Path) -> str:
    """A seeded, freshly initialised ViT of the task's depth as a model file (what ``scalenas train`` trains)."""
    from scalenas.io import seed_everything
    from scalenas.models.registry import save_model
    from scalenas.models.vit import ViT

    seed_everything(task["seed"])
    save_model(path, ViT(depth=task["depth"]))
    return str(path)


def train_one(task: dict) -> dict:
    """Train (or reuse) one model in a worker process; grows (a)'s final.pt first for (b)."""
    import torch

    from scalenas.cli.main import main as cli_main
    from scalenas.train.config import load_job
    from scalenas.train.standalone import RESULT_NAME, TRAIN_CKPT_NAME, train_standalone

    torch.set_num_threads(1)
    out = Path(task["out_dir"])
    if (out / RESULT_NAME).is_file():
        return json.loads((out / RESULT_NAME).read_text())
    resume = (out / TRAIN_CKPT_NAME).is_file()
    init_file = None
    if task.get("grow_from") and not resume:
        init_file = str(out.parent / f"{out.name}-init.pt")
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = cli_main(["grow", "--model", task["grow_from"], "--depth", "2x", "--out", init_file])
        if rc != 0:
            raise RuntimeError(f"scalenas grow failed for {task['label']}")
        (out.parent / f"{out.name}-grow.txt").write_text(buf.getvalue())
    if task["model"] == "vit" and init_file is None and not resume:
        init_file = fresh_vit_file(task, out.parent / f"{out.name}-init.pt")
    cfg = load_job("digits", task["recipe"])  # the ViT recipe is AdamW through the same loop (optimizer: adamw)
    arch, init = (None, init_file) if init_file else (task["arch"], None)
    summary = train_standalone(cfg, None if resume else arch, None if resume else init, out_dir=out,
                               resume=resume, progress=False)
    if not summary["finished"]:
        raise KeyboardInterrupt
    return summary["result"]


def _rel(path: str) -> str:
    """``path`` relative to the repository when it lies inside it (portable CSV rows)."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def _run_key(model: str, variant: str, seed: int, steps: int, batch: int) -> str:
    return f"{model}-{variant}-seed{seed}-steps{steps}-b{batch}"


def build_tasks(args) -> list[dict]:
    cache = Path(args.cache)
    tasks = []
    for model in args.models:
        e, batch = (args.vit_steps, args.vit_batch) if model == "vit" else (args.cnn_steps, args.cnn_batch)
        for seed in range(args.seeds):
            for variant in VARIANTS:
                steps = 3 * e if variant == "scratch_3E" else e
                deep = variant.startswith("scratch")
                recipe = {**COMMON, "steps": steps, "batch_size": batch, "seed": seed,
                          # warm-up: 10 % of the run (the job's fixed 50 steps would be half of a short run)
                          "warmup_steps": max(1, steps // 10), "checkpoint_every": max(50, steps // 2)}
                if model == "vit":
                    recipe.update(lr=args.vit_lr, weight_decay=VIT_WEIGHT_DECAY, optimizer="adamw")
                    recipe.pop("checkpoint_every")
                else:
                    recipe.update(CNN_RECIPE)
                out = cache / _run_key(model, variant, seed, steps, batch)
                task = {"model": model, "variant": variant, "seed": seed, "steps": steps,
                        "label": f"{model} {variant} seed {seed}", "out_dir": str(out), "recipe": recipe,
                        "depth": 12 if deep else 6,
                        "arch": json.dumps(CNN_DEEP if deep else CNN_ORIG) if model == "cnn" else None}
                if variant == "grown":
                    task["after"] = _run_key(model, "original", seed, e, batch)
                    task["grow_from"] = str(cache / task["after"] / "final.pt")
                tasks.append(task)
    return tasks


def run_tasks(tasks: list[dict], jobs: int) -> dict[str, dict]:
    """Run every task, at most ``jobs`` at once; a (b) task starts when its (a) run has finished."""
    t0 = time.perf_counter()
    results: dict[str, dict] = {}
    # (a) runs first (they gate (b)), then longest first; (b) runs are released as their (a) finishes.
    pending = sorted((t for t in tasks if "after" not in t),
                     key=lambda t: (t["variant"] != "original", -t["steps"] * (2 if t["model"] == "vit" else 1)))
    waiting = [t for t in tasks if "after" in t]

    def report(t: dict, res: dict) -> None:
        print(f"  [{len(results)}/{len(tasks)}] {t['label']}: holdout {res['holdout_top1']:.4f} test "
              f"{res['test_top1']:.4f} train {res['train_seconds']:.0f} s ({time.perf_counter() - t0:.0f} s)",
              flush=True)

    def release() -> None:
        for t in list(waiting):
            if t["after"] in results:
                waiting.remove(t)
                pending.insert(0, t)

    if jobs == 1:
        while pending:
            t = pending.pop(0)
            results[Path(t["out_dir"]).name] = train_one(t)
            report(t, results[Path(t["out_dir"]).name])
            release()
        return results
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        running = {}
        while pending or running:
            while pending and len(running) < jobs:
                t = pending.pop(0)
                running[pool.submit(train_one, t)] = t
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in done:
                t = running.pop(f)
                results[Path(t["out_dir"]).name] = f.result()
                report(t, results[Path(t["out_dir"]).name])
            release()
    return results


# ------------------------------------------------------------------------------------------ summary
def _ms(values, digits: int = 4) -> str:
    import numpy as np

    v = np.asarray(list(values), dtype=float)
    if v.size == 0:
        return "-"
    if v.size == 1:
        return f"{v.mean():.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def write_summary(frame, vit_report: dict, settings: dict, path: Path) -> str:
    from scalenas.io import atomic_write_text

    lines = ["# Growing 2x deeper with shared layers vs the same deeper model from scratch (digits, CPU)", "",
             f"Generated by `jobs/grow_digits.py`; the run that trained the {settings['trained']} models finished "
             f"{settings['finished']} after a wall time of {settings['wall_s']:.0f} s ({settings['jobs']} trainings "
             f"in parallel, 1 torch thread each, on a 2-core machine shared with other jobs: load average "
             f"{settings['load']} at the end).", "",
             f"Seeds {', '.join(str(s) for s in range(settings['seeds']))} (initialisation, data order, "
             f"augmentation). One data split (data_seed 0) for every run: train {settings['train_size']}, holdout "
             f"{settings['holdout_size']} and test {settings['test_size']} images, so one image is "
             f"{100 / settings['test_size']:.2f} points of test top-1. Nothing is selected on the holdout split; "
             "both splits are plain evaluations after the last step.", "",
             "Recipes (the same within a model for every variant; warm-up 10 % of each run, then cosine to 0; "
             "label smoothing 0.1; random 1-2 px shifts):", "",
             f"* CNN: `scalenas train`'s trainer, SGD + Nesterov, lr {CNN_RECIPE['lr']}, batch "
             f"{settings['cnn_batch']}, weight decay 4e-5 off BN/biases. **E = {settings['cnn_steps']} steps** "
             f"(~{settings['cnn_steps'] * settings['cnn_batch'] / settings['train_size']:.1f} epochs).",
             f"* ViT: AdamW, lr {settings['vit_lr']:g}, batch {settings['vit_batch']}, weight decay "
             f"{VIT_WEIGHT_DECAY} off norms/biases/position and class tokens, in this script's loop (same data, "
             "batches, schedule and evaluation as `scalenas train`): `scalenas train` has only SGD, which barely "
             "trains this ViT in a short budget (seed 0: SGD lr 0.05, 300 steps of 128: 37 % test top-1; "
             f"AdamW 3e-3: 87 %). **E = {settings['vit_steps']} steps** "
             f"(~{settings['vit_steps'] * settings['vit_batch'] / settings['train_size']:.1f} epochs).", "",
             "Variants, per model and seed:", "",
             "* (a) `original`: the original model, trained from scratch for E steps.",
             "* (b) `grown`: (a)'s final weights grown with `scalenas grow --depth 2x` (stacked order "
             "`[1..L, 1..L]`, default parallel adapters, rank 8), then fine-tuned for E steps with every parameter "
             "training (a shared tensor gets the sum of its instances' gradients). Its cumulative training time "
             "includes (a)'s.",
             "* (c) `scratch_E` / `scratch_3E`: the same 2x-deep architecture as an **ordinary, unshared** model "
             "trained from scratch for E / 3E steps, as in the paper's comparison (the deeper model of the same "
             "family, not the grown structure re-initialised). ViT: a ViT of depth 12. CNN: the digits-tiny subnet "
             "at depth multiplier 1.5, whose 15 blocks have exactly the ops, widths and strides of the grown "
             "network position by position (checked by the script); it has no adapters and no shared tensors, so "
             "it has more parameters than (b).", "",
             "Params count every shared tensor once; overhead is relative to the original model (a). Train s is "
             "the time of the optimisation loop only (no evaluation), measured on a machine shared with other "
             "jobs, so it is noisy; cumulative block-steps (steps x blocks, (a)'s included for (b)) is a "
             "load-independent proxy of the training compute (exact up to the stem/head for the ViT, whose blocks "
             "all cost the same; rough for the CNN, whose blocks differ).", ""]
    for model, title in (("vit", "ViT (default config: 16 px, 4x4 patches, width 64, 4 heads), depth 6 -> 12"),
                         ("cnn", "CNN (digits-tiny, base " + json.dumps(CNN_BASE) + ", 16 px), 9 -> 15 blocks")):
        g = frame[frame["model"] == model]
        if g.empty:
            continue
        lines += [f"## {title}", "",
                  "| variant | blocks | params | overhead vs (a) | steps | holdout top-1 | test top-1 | train s | "
                  "cumulative train s | cumulative block-steps |", "|---|---|---|---|---|---|---|---|---|---|"]
        for variant in VARIANTS:
            v = g[g["variant"] == variant]
            if v.empty:
                continue
            lines.append(f"| {LABELS[variant]} | {int(v['blocks'].iloc[0])} | {int(v['params'].iloc[0]):,} | "
                         f"{v['overhead_pct'].iloc[0]:+.2f} % | {int(v['steps'].iloc[0])} | "
                         f"{_ms(v['holdout_top1'])} | {_ms(v['test_top1'])} | {_ms(v['train_s'], 0)} | "
                         f"{_ms(v['cumulative_train_s'], 0)} | {int(v['cumulative_block_steps'].iloc[0]):,} |")
        piv = g.pivot_table(index="seed", columns="variant", values=["holdout_top1", "test_top1"])
        lines += ["", "Paired differences (same seed), in points of top-1, mean ± std over seeds:", ""]
        for other in ("scratch_E", "scratch_3E", "original"):
            if ("test_top1", "grown") not in piv or ("test_top1", other) not in piv:
                continue
            dh = 100 * (piv[("holdout_top1", "grown")] - piv[("holdout_top1", other)])
            dt = 100 * (piv[("test_top1", "grown")] - piv[("test_top1", other)])
            wins = int((dt > 0).sum())
            lines.append(f"* (b) grown - {LABELS[other]}: holdout {_ms(dh, 2)}, test {_ms(dt, 2)} "
                         f"(b ahead on test in {wins}/{len(dt)} seeds)")
        lines.append("")
    lines += ["## Parameter overhead of `--depth 2x` with the default rank on the default ViT", "",
              f"`grow(ViT(), '2x')` (parallel adapters, rank {vit_report['rank']}): original "
              f"{vit_report['original']:,} parameters, grown {vit_report['grown']:,} (shared tensors counted once), "
              f"added {vit_report['added']:,}: **overhead {vit_report['overhead_pct']:.2f} %** (target < 15 %). "
              f"An unshared ViT of depth 12 has {vit_report['deep']:,} "
              f"(+{100 * (vit_report['deep'] - vit_report['original']) / vit_report['original']:.2f} %).", "",
              "Rows: `grow_digits.csv` (model, variant, seed, steps, batch_size, blocks, params, overhead_pct, "
              "holdout_top1, test_top1, train_s, cumulative_train_s, cumulative_block_steps, init, run_dir)."]
    text = "\n".join(lines) + "\n"
    atomic_write_text(path, text)
    return text


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the spawned workers
    os.environ["MKL_NUM_THREADS"] = "1"
    import pandas as pd
    import torch

    from scalenas.models.grow import DEFAULT_RANK, count_unique_params, grow, param_report
    from scalenas.io import atomic_write_csv
    from scalenas.models.registry import load_model
    from scalenas.models.vit import ViT

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    if "cnn" in args.models:
        check_cnn_layout()
    tasks = build_tasks(args)
    print(f"grow_digits: {len(tasks)} trainings (ViT E = {args.vit_steps} steps of {args.vit_batch}, CNN E = "
          f"{args.cnn_steps} steps of {args.cnn_batch}; {args.seeds} seed(s); models {', '.join(args.models)}), "
          f"{args.jobs} job(s), run folders in {args.cache}", flush=True)
    cached = sum((Path(t["out_dir"]) / "result.json").is_file() for t in tasks)
    results = run_tasks(tasks, args.jobs)

    rows, blocks = [], {}
    for t in tasks:
        r = results[Path(t["out_dir"]).name]
        key = (t["model"], t["variant"])
        if key not in blocks:
            inner = load_model(Path(t["out_dir"]) / "final.pt")
            inner = getattr(inner, "model", inner)
            blocks[key] = len(inner.blocks) if hasattr(inner, "blocks") else sum(len(s) for s in inner.stages)
        rows.append({"model": t["model"], "variant": t["variant"], "seed": t["seed"], "steps": r["steps"],
                     "batch_size": r["batch_size"], "blocks": blocks[key], "params": r["params"],
                     "holdout_top1": r["holdout_top1"], "test_top1": r["test_top1"], "train_s": r["train_seconds"],
                     "init": r["init"].replace(f"{REPO}{os.sep}", ""), "run_dir": _rel(t["out_dir"])})
    frame = pd.DataFrame(rows)
    base = {m: frame[(frame["model"] == m) & (frame["variant"] == "original")]["params"].iloc[0] for m in args.models}
    frame["overhead_pct"] = [round(100.0 * (p - base[m]) / base[m], 3) for m, p in zip(frame["model"], frame["params"])]
    orig_time = {(m, s): t for m, v, s, t in zip(frame["model"], frame["variant"], frame["seed"], frame["train_s"])
                 if v == "original"}
    frame["cumulative_train_s"] = [round(t + (orig_time[(m, s)] if v == "grown" else 0.0), 2)
                                   for m, v, s, t in zip(frame["model"], frame["variant"], frame["seed"],
                                                         frame["train_s"])]
    orig_bs = {(m, s): st * b for m, v, s, st, b in zip(frame["model"], frame["variant"], frame["seed"],
                                                          frame["steps"], frame["blocks"]) if v == "original"}
    frame["cumulative_block_steps"] = [st * b + (orig_bs[(m, s)] if v == "grown" else 0)
                                       for m, v, s, st, b in zip(frame["model"], frame["variant"], frame["seed"],
                                                                 frame["steps"], frame["blocks"])]
    frame = frame[["model", "variant", "seed", "steps", "batch_size", "blocks", "params", "overhead_pct",
                   "holdout_top1", "test_top1", "train_s", "cumulative_train_s", "cumulative_block_steps", "init",
                   "run_dir"]]
    atomic_write_csv(Path(args.out_csv), frame)

    vit = ViT()
    rep = param_report(vit, grow(vit, "2x"))
    rep.update(rank=DEFAULT_RANK, deep=count_unique_params(ViT(depth=12)))
    any_result = next(iter(results.values()))
    from scalenas.data.datasets import load_data

    data = load_data("digits", seed=0)
    timing_file = Path(args.cache) / "last_run.json"
    timing = {"wall_s": round(time.perf_counter() - t0, 1), "load": " / ".join(f"{x:.1f}" for x in os.getloadavg()),
              "trained": len(tasks) - cached, "finished": time.strftime("%Y-%m-%d %H:%M")}
    if cached == len(tasks) and timing_file.is_file():  # a summary-only rerun: keep the training run's timing
        timing = json.loads(timing_file.read_text())
    else:
        from scalenas.io import atomic_write_json

        atomic_write_json(timing_file, timing)
    settings = {"vit_steps": args.vit_steps, "vit_batch": args.vit_batch, "vit_lr": args.vit_lr,
                "cnn_steps": args.cnn_steps, "cnn_batch": args.cnn_batch, "seeds": args.seeds, "jobs": args.jobs,
                "train_size": len(data.train), "holdout_size": any_result["holdout_size"],
                "test_size": any_result["test_size"],
                "load": timing["load"], "wall_s": timing["wall_s"], "trained": timing["trained"],
                "finished": timing["finished"]}
    text = write_summary(frame, rep, settings, Path(args.out_md))
    print(text)
    print(f"wrote {args.out_csv} and {args.out_md} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
