"""Evidence: is a model grown 2x deeper with shared layers better than the same deeper model from scratch? (digits, CPU)

For the default ViT (6 blocks -> 12) and one digits-tiny CNN (9 blocks, 6 of them stride-1 and width-preserving,
-> 15), once per seed, this script trains with the standalone recipe (``scalenas train``: SGD + Nesterov,
linear warm-up + cosine, label smoothing, random shifts; one data split for every run):

(a) ``original``: the original model from scratch for E steps;
(b) ``grown``: (a)'s trained weights grown 2x with ``scalenas grow --depth 2x`` (stacked order, default parallel
    adapters, default rank), then fine-tuned for E steps (every parameter trains);
(c) ``scratch_E`` / ``scratch_3E``: the same 2x-deep architecture as an ordinary, *unshared* model, freshly
    initialised and trained for E and for 3E steps. For the ViT that is a ViT of depth 12; for the CNN it is the
    subnet with depth multiplier 1.5, whose blocks are exactly the grown layout (same ops, widths and strides per
    position, e.g. stage 1 ``[k3,k5,k5,k5,k5]``), checked below; it has no adapters and no sharing.

It writes ``results/grow_digits.csv`` (one row per trained model) and ``results/grow_digits.md`` (mean ± std over
seeds, paired differences (b) - (c), parameter overheads with shared tensors counted once, including the
overhead of ``--depth 2x`` with the default rank on the default ViT). Run folders are cached under
``results/runs/grow_digits/`` by (model, variant, seed, steps, batch), so a rerun reuses finished trainings.

Budget flags: ``--steps`` (E), ``--seeds``, ``--jobs`` (trainings in parallel, 1 torch thread each). The defaults
(E = 100 steps of batch 128, ~11 epochs; 3 seeds; 2 jobs) take about 15 minutes on 2 CPU cores.

    python jobs/grow_digits.py                                                    # the evidence
    python jobs/grow_digits.py --steps 4 --seeds 1 --out-csv /tmp/g.csv --out-md /tmp/g.md   # smoke
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


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=100, help="E: training steps of (a), (b) and (c, E) (default 100)")
    p.add_argument("--batch-size", type=int, default=128, help="batch size (default 128, the recipe's)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per variant (default 3)")
    p.add_argument("--jobs", type=int, default=2, help="trainings in parallel, 1 torch thread each (default 2)")
    p.add_argument("--models", default="vit,cnn", help="comma list of vit, cnn (default both)")
    p.add_argument("--cache", default=str(REPO / "results" / "runs" / "grow_digits"),
                   help="run folders (default results/runs/grow_digits)")
    p.add_argument("--out-csv", default=str(REPO / "results" / "grow_digits.csv"))
    p.add_argument("--out-md", default=str(REPO / "results" / "grow_digits.md"))
    args = p.parse_args(argv)
    for name in ("steps", "batch_size", "seeds", "jobs"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not args.models or any(m not in ("vit", "cnn") for m in args.models):
        p.error("--models takes a comma list of vit, cnn")
    return args


# ------------------------------------------------------------------------------------------ architectures
def check_cnn_layout() -> None:
    """The grown CNN and the unshared depth-1.5 CNN must have the same blocks, position by position."""
    from scalenas.grow import grow
    from scalenas.standalone import StandaloneNet

    grown = grow(StandaloneNet.from_subnet("digits-tiny", CNN_ORIG), "2x", adapter="none")
    deep = StandaloneNet.from_subnet("digits-tiny", CNN_DEEP)

    def sig(stages):
        return [[(b.kernel, b.stride, b.in_channels, b.out_channels, b.residual) for b in st] for st in stages]

    if sig(grown.model.stages) != sig(deep.stages):
        sys.exit(f"grow_digits: the unshared 2x-deep CNN does not match the grown layout:\n"
                 f"  grown {sig(grown.model.stages)}\n  deep  {sig(deep.stages)}")


def arch_files(cache: Path) -> dict[str, str]:
    """Untrained ViT files (depth 6 and 12) for ``--arch FILE --init scratch``; CNNs are inline JSON."""
    from scalenas.modelio import save_model
    from scalenas.vit import ViT

    cache.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, depth in (("vit6", 6), ("vit12", 12)):
        path = cache / f"{name}.pt"
        if not path.is_file():
            save_model(path, ViT(depth=depth))
        files[name] = str(path)
    return files


# ------------------------------------------------------------------------------------------ training
def train_one(task: dict) -> dict:
    """Train (or reuse / resume) one model in a worker process; grows (a)'s final.pt first for (b)."""
    import torch

    from scalenas.cli import main as cli_main
    from scalenas.config import load_job
    from scalenas.train_standalone import RESULT_NAME, TRAIN_CKPT_NAME, train_standalone

    torch.set_num_threads(1)
    out = Path(task["out_dir"])
    if (out / RESULT_NAME).is_file():
        return json.loads((out / RESULT_NAME).read_text())
    cfg = load_job("digits", task["overrides"])
    resume = (out / TRAIN_CKPT_NAME).is_file()
    arch, init = task["arch"], task["init"]
    if task.get("grow_from") and not resume:
        grown = out.parent / f"{out.name}-init.pt"
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = cli_main(["grow", "--model", task["grow_from"], "--depth", "2x", "--out", str(grown)])
        if rc != 0:
            raise RuntimeError(f"scalenas grow failed for {task['label']}")
        (out.parent / f"{out.name}-grow.txt").write_text(buf.getvalue())
        arch, init = None, str(grown)
    summary = train_standalone(cfg, None if resume else arch, None if resume else init, out_dir=out,
                               resume=resume, progress=False)
    if not summary["finished"]:
        raise KeyboardInterrupt
    return summary["result"]


def _run_key(model: str, variant: str, seed: int, steps: int, batch: int) -> str:
    return f"{model}-{variant}-seed{seed}-steps{steps}-b{batch}"


def build_tasks(args, files: dict[str, str], cache: Path) -> list[dict]:
    e = args.steps
    specs = {"vit": {"original": (files["vit6"], "scratch"), "deep": (files["vit12"], "scratch")},
             "cnn": {"original": (json.dumps(CNN_ORIG), None), "deep": (json.dumps(CNN_DEEP), None)}}
    tasks = []
    for model in args.models:
        for seed in range(args.seeds):
            for variant in VARIANTS:
                steps = 3 * e if variant == "scratch_3E" else e
                arch, init = specs[model]["deep" if variant.startswith("scratch") else "original"]
                out = cache / _run_key(model, variant, seed, steps, args.batch_size)
                task = {"model": model, "variant": variant, "seed": seed, "steps": steps,
                        "label": f"{model} {variant} seed {seed}", "out_dir": str(out), "arch": arch, "init": init,
                        # warm-up: 10 % of the run (the job's 50 steps would be half of a short run)
                        "overrides": {"steps": steps, "batch_size": args.batch_size, "seed": seed, "data": "digits",
                                      "data_seed": 0, "threads": 1, "device": "cpu",
                                      "warmup_steps": max(1, steps // 10),
                                      "checkpoint_every": max(50, steps // 2)}}
                if variant == "grown":
                    task["after"] = _run_key(model, "original", seed, e, args.batch_size)
                    task["grow_from"] = str(cache / task["after"] / "final.pt")
                tasks.append(task)
    return tasks


def run_tasks(tasks: list[dict], jobs: int) -> dict[str, dict]:
    """Run every task, at most ``jobs`` at once; a (b) task starts when its (a) run has finished."""
    t0 = time.perf_counter()
    results: dict[str, dict] = {}
    by_key = {Path(t["out_dir"]).name: t for t in tasks}
    # Longest first (3E runs), dependencies' parents early; (b) runs are released as their (a) finishes.
    pending = sorted((t for t in tasks if "after" not in t),
                     key=lambda t: (t["variant"] != "original", -t["steps"]))
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
    assert set(results) == set(by_key)
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

    e = settings["steps"]
    lines = ["# Growing 2x deeper with shared layers vs the same deeper model from scratch (digits, CPU)", "",
             f"Generated by `jobs/grow_digits.py` on {time.strftime('%Y-%m-%d %H:%M')}; wall time "
             f"{settings['wall_s']:.0f} s ({settings['jobs']} trainings in parallel, 1 torch thread each).", "",
             f"E = {e} steps of batch {settings['batch_size']} (about {e / settings['steps_per_epoch']:.1f} epochs "
             f"of the {settings['train_size']}-image train split), 3E = {3 * e} steps. Seeds "
             f"{', '.join(str(s) for s in range(settings['seeds']))} (initialisation, data order, augmentation); "
             f"one data split (data_seed 0): holdout {settings['holdout_size']} and test {settings['test_size']} "
             "images, so one image is "
             f"{100 / settings['test_size']:.2f} points of test top-1. Recipe of `scalenas train` (jobs/digits.yaml: "
             "SGD + Nesterov, peak lr 0.1, cosine, label smoothing 0.1, random shifts), warm-up 10 % of each run. "
             "Nothing is selected on the holdout split; both splits are plain evaluations.", "",
             "Variants, per model and seed:", "",
             "* (a) `original`: the original model, trained from scratch for E steps.",
             "* (b) `grown`: (a)'s final weights grown with `scalenas grow --depth 2x` (stacked order "
             "`[1..L, 1..L]`, default parallel adapters, rank 8), then fine-tuned for E steps, every parameter "
             "training (shared tensors get the sum of their instances' gradients). Its cumulative training time "
             "includes (a)'s.",
             "* (c) `scratch_E` / `scratch_3E`: the same 2x-deep architecture as an **ordinary, unshared** model "
             "trained from scratch for E / 3E steps, as in the paper's comparison (a deeper model of the same "
             "family, not the grown structure re-initialised). ViT: a ViT of depth 12. CNN: the digits-tiny subnet "
             "at depth multiplier 1.5, whose 15 blocks have exactly the ops, widths and strides of the grown "
             "network position by position (checked by the script); it has no adapters and no shared tensors, so it "
             "has more parameters than (b).", "",
             "Params count every shared tensor once; overhead is relative to the original model (a).", ""]
    for model, title in (("vit", "ViT (default config: 16 px, 4x4 patches, width 64, 4 heads), depth 6 -> 12"),
                         ("cnn", "CNN (digits-tiny, base " + json.dumps(CNN_BASE) + ", 16 px), 9 -> 15 blocks")):
        g = frame[frame["model"] == model]
        if g.empty:
            continue
        lines += [f"## {title}", "",
                  "| variant | blocks | params | overhead vs (a) | steps | holdout top-1 | test top-1 | train s | "
                  "cumulative train s |", "|---|---|---|---|---|---|---|---|---|"]
        for variant in VARIANTS:
            v = g[g["variant"] == variant]
            if v.empty:
                continue
            lines.append(f"| {LABELS[variant]} | {int(v['blocks'].iloc[0])} | {int(v['params'].iloc[0]):,} | "
                         f"{v['overhead_pct'].iloc[0]:+.2f} % | {int(v['steps'].iloc[0])} | "
                         f"{_ms(v['holdout_top1'])} | {_ms(v['test_top1'])} | {_ms(v['train_s'], 0)} | "
                         f"{_ms(v['cumulative_train_s'], 0)} |")
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
              "Rows: `grow_digits.csv` (model, variant, seed, steps, blocks, params, overhead_pct, holdout_top1, "
              "test_top1, train_s, cumulative_train_s, run_dir)."]
    text = "\n".join(lines) + "\n"
    atomic_write_text(path, text)
    return text


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the spawned workers
    os.environ["MKL_NUM_THREADS"] = "1"
    import pandas as pd
    import torch

    from scalenas.data import load_data
    from scalenas.grow import DEFAULT_RANK, count_unique_params, grow, param_report
    from scalenas.io import atomic_write_csv
    from scalenas.vit import ViT

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    cache = Path(args.cache)
    check_cnn_layout()
    files = arch_files(cache)
    tasks = build_tasks(args, files, cache)
    print(f"grow_digits: {len(tasks)} trainings (E = {args.steps} steps, {args.seeds} seed(s), models "
          f"{', '.join(args.models)}), {args.jobs} job(s), run folders in {cache}", flush=True)
    results = run_tasks(tasks, args.jobs)

    data = load_data("digits", seed=0)
    steps_per_epoch = len(data.train) // args.batch_size
    rows = []
    for t in tasks:
        r = results[Path(t["out_dir"]).name]
        rows.append({"model": t["model"], "variant": t["variant"], "seed": t["seed"], "steps": r["steps"],
                     "params": r["params"], "holdout_top1": r["holdout_top1"], "test_top1": r["test_top1"],
                     "train_s": r["train_seconds"], "init": r["init"], "run_dir": t["out_dir"]})
    frame = pd.DataFrame(rows)
    # blocks, overhead vs (a) and cumulative time ((b) includes the (a) run it was grown from)
    from scalenas.modelio import load_model

    blocks = {}
    for model in args.models:
        for variant in VARIANTS:
            run = frame[(frame["model"] == model) & (frame["variant"] == variant)]["run_dir"].iloc[0]
            net = load_model(Path(run) / "final.pt")
            inner = getattr(net, "model", net)
            blocks[(model, variant)] = len(inner.blocks) if hasattr(inner, "blocks") else \
                sum(len(s) for s in inner.stages)
    frame["blocks"] = [blocks[(m, v)] for m, v in zip(frame["model"], frame["variant"])]
    base_params = {m: frame[(frame["model"] == m) & (frame["variant"] == "original")]["params"].iloc[0]
                   for m in args.models}
    frame["overhead_pct"] = [round(100.0 * (p - base_params[m]) / base_params[m], 3)
                             for m, p in zip(frame["model"], frame["params"])]
    orig_time = {(m, s): t for m, v, s, t in zip(frame["model"], frame["variant"], frame["seed"], frame["train_s"])
                 if v == "original"}
    frame["cumulative_train_s"] = [round(t + (orig_time[(m, s)] if v == "grown" else 0.0), 2)
                                   for m, v, s, t in zip(frame["model"], frame["variant"], frame["seed"],
                                                         frame["train_s"])]
    frame = frame[["model", "variant", "seed", "steps", "blocks", "params", "overhead_pct", "holdout_top1",
                   "test_top1", "train_s", "cumulative_train_s", "init", "run_dir"]]
    atomic_write_csv(Path(args.out_csv), frame)

    vit = ViT()
    rep = param_report(vit, grow(vit, "2x"))
    rep.update(rank=DEFAULT_RANK, deep=count_unique_params(ViT(depth=12)))
    settings = {"steps": args.steps, "batch_size": args.batch_size, "seeds": args.seeds, "jobs": args.jobs,
                "steps_per_epoch": steps_per_epoch, "train_size": len(data.train),
                "holdout_size": len(data.holdout), "test_size": len(data.test),
                "wall_s": time.perf_counter() - t0}
    text = write_summary(frame, rep, settings, Path(args.out_md))
    print(text)
    print(f"wrote {args.out_csv} and {args.out_md} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
