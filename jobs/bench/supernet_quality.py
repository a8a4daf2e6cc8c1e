"""Supernet quality: does the supernet rank subnets the way standalone training does?

    python jobs/bench/supernet_quality.py [--recipe NAME ...] [--recipes FILE.yaml] [--data animals]
        [--space animals-tiny] [--steps 800] [--subnets 20] [--standalone-steps 300] [--batch-size 128]
        [--seed 0] [--threads 1] [--out results/runs/supernet_quality] [--out-csv results/bench/supernet_quality]

For every supernet training *recipe* (TrainConfig overrides, see ``BUILTIN_HELP`` below or a YAML file mapping
name -> overrides), it trains the supernet (``train_supernet``), scores a fixed set of subnets with
``SupernetEvaluator`` on the holdout (BN recalibrated per subnet: exactly the search's fitness) and compares that
with the same subnets trained standalone from scratch (``train_standalone``, holdout top-1 of the same split:
``data_seed`` fixed for every run). Per recipe: Kendall tau and Spearman rho with p-values (scipy.stats, all subnets
pooled, plus the mean of the per-stage Kendall taus), the gap standalone - supernet in percentage points per
scaling stage and overall, and the supernet's training wall time (``time.perf_counter`` around ``train_supernet``:
data loading and the end-of-training panel included).

The subnet set: ``--subnets`` (rounded up to a multiple of the number of scaling stages) spread equally over the
stages; each stage contributes its smallest and largest subnet (``extreme_subnets``) and seeded random ones
(``sample_subnet`` with the stage forced), distinct as built networks. The same set for every recipe.

Caching (everything under ``--out``; an interrupted run resumes where it stopped):

* ``standalone/st-<hash>``: one standalone run per (subnet, standalone recipe); finished when ``result.json``
  exists, resumed from its checkpoint otherwise. Every recipe reuses them.
* ``supernets/sn-<hash>``: one supernet run per *training* recipe. The hash leaves out the keys that do not
  change the weights (bn_calib_batches, panel_random, threads, logging), so ``calib_more`` reuses ``base``'s
  checkpoint and only re-evaluates. ``bench_train.json`` records the wall time and threads of its training;
  ``bench_eval-*.json`` caches the evaluations.
* ``spaces/``: modified copies of the space YAML (recipes ``coupling1``, ``stage_weights``).

Writes (atomically, after every recipe) ``PREFIX.csv`` (one row per recipe), ``PREFIX_subnets.csv`` (recipe x
subnet) and ``PREFIX.md`` (the ablation table, the command line, the targets), PREFIX = ``--out-csv``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # jobs/: jobkit
import jobkit  # noqa: E402  (puts the checkout and jobs/ on sys.path)
REPO = jobkit.REPO

import numpy as np
import pandas as pd
import yaml
from scipy import stats

from scalenas.errors import ScalenasError
from scalenas.io import atomic_write_csv, atomic_write_json, atomic_write_text, make_dir
from scalenas.options import flat_fields
from scalenas.spaces.arch import Subnet, derive_subnet, extreme_subnets, sample_subnet
from scalenas.spaces.flops import subnet_flops_params
from scalenas.spaces.space import SearchSpace, load_space, resolve_space_path
from scalenas.train.config import TrainConfig, load_job

TARGET_TAU = 0.7
TARGET_GAP = 5.0  # percentage points
DEFAULT_STEPS = TrainConfig().steps  # 800
DEFAULT_WARMUP = TrainConfig().warmup_steps  # 50
# TrainConfig keys that do not change the trained weights: left out of the supernet cache key.
EVAL_ONLY_KEYS = {"bn_calib_batches", "panel_random", "threads", "log_every", "checkpoint_every", "tensorboard",
                  "workers", "notes", "rescan_data", "memory_limit_mb", "source"}
# Keys that define the data split or the subnets: fixed by the benchmark, a recipe may not change them.
FIXED_KEYS = {"data", "data_seed", "holdout_frac", "test_frac", "store_size", "space", "arch"}
SPACE_EDIT = "space_edit"  # recipe key (not a TrainConfig field): top-level keys replaced in a copy of the space
BUILTIN_ORDER = ("base", "long", "sandwich", "sandwich_kd", "coupling1", "lr_low", "lr_high", "warmup_long",
                 "calib_more", "stage_weights")
BUILTIN_HELP = {
    "base": "the defaults (TrainConfig, or --job) at --steps",
    "long": "3x the steps (same warm-up)",
    "sandwich": "sandwich: true (largest + smallest + random path of the drawn stage per step)",
    "sandwich_kd": "sandwich + inplace_distill (smaller paths learn the largest path's soft predictions)",
    "coupling1": "ordered coupling n=1 instead of bilateral n=2 (a copy of the space YAML)",
    "lr_low": "peak lr x0.25",
    "lr_high": "peak lr x2",
    "warmup_long": "warm-up x4 (at most half the steps)",
    "calib_more": "bn_calib_batches x4 at evaluation only (reuses base's checkpoint)",
    "stage_weights": "uniform stage sampling weights instead of the space's (a copy of the space YAML)",
}


def log(msg: str) -> None:
    print(msg, flush=True)


def digest(obj: Any, n: int = 12) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


# ------------------------------------------------------------------------------------------ recipes
def base_warmup(steps: int) -> int:
    """The default warm-up (50 steps), at most a fifth of a short budget."""
    return max(0, min(DEFAULT_WARMUP, steps // 5))


def builtin_recipes(base: TrainConfig, space: SearchSpace) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """(name -> overrides, name -> why skipped) of the built-in ablation, concrete values for this base."""
    steps = base.steps
    recipes: dict[str, dict[str, Any]] = {
        "base": {},
        "long": {"steps": 3 * steps},
        "sandwich": {"sandwich": True},
        "sandwich_kd": {"sandwich": True, "inplace_distill": True},
        "coupling1": {SPACE_EDIT: {"coupling": 1}},
        "lr_low": {"lr": round(base.lr * 0.25, 6)},
        "lr_high": {"lr": round(base.lr * 2.0, 6)},
        "warmup_long": {"warmup_steps": max(1, min(4 * base.warmup_steps, steps // 2))},
        "calib_more": {"bn_calib_batches": 4 * base.bn_calib_batches},
        # Uniform; the space validator refuses equal entries in a number list, hence the 1e-6 steps.
        "stage_weights": {SPACE_EDIT: {"stage_weights": [round(1.0 + 1e-6 * s, 6) for s in range(len(space.scaling))]}},
    }
    skipped: dict[str, str] = {}
    if space.coupling == 1:
        skipped["coupling1"] = f"space {space.name} already uses ordered coupling n=1"
    if max(space.stage_weights) - min(space.stage_weights) < 1e-4:
        skipped["stage_weights"] = f"space {space.name} already samples its stages uniformly"
    if recipes["warmup_long"]["warmup_steps"] <= base.warmup_steps:
        skipped["warmup_long"] = f"{steps} steps leave no room for a longer warm-up than {base.warmup_steps}"
    return recipes, skipped


def read_recipes_file(path: str) -> dict[str, dict[str, Any]]:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise ScalenasError(f"--recipes {path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError:
        raise ScalenasError(f"{path}: malformed YAML") from None
    if not isinstance(data, dict) or not data:
        raise ScalenasError(f"{path}: expected a mapping of recipe name -> TrainConfig overrides")
    out = {}
    for name, over in data.items():
        if over is None:
            over = {}
        if not isinstance(over, dict):
            raise ScalenasError(f"{path}: {name}: expected a mapping of TrainConfig overrides")
        out[str(name)] = dict(over)
    return out


def check_recipe(name: str, over: dict[str, Any], where: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ScalenasError(f"{where}: recipe name {name!r}: use letters, digits, '_', '-', '.'")
    known = {f.name for f in flat_fields(TrainConfig)} | {SPACE_EDIT}
    for k, v in over.items():
        if k not in known:
            raise ScalenasError(f"{where}: {name}.{k}: unknown key (TrainConfig fields or {SPACE_EDIT})")
        if k in FIXED_KEYS:
            raise ScalenasError(f"{where}: {name}.{k}: fixed by the benchmark (same data split and subnets for "
                                f"every recipe); use {SPACE_EDIT} to change the space")
        if k == SPACE_EDIT and not isinstance(v, dict):
            raise ScalenasError(f"{where}: {name}.{SPACE_EDIT}: expected a mapping of space YAML keys")


def select_recipes(args, base: TrainConfig, space: SearchSpace) -> tuple[list[tuple[str, dict]], list[str]]:
    builtins, skipped = builtin_recipes(base, space)
    available = dict(builtins)
    from_file: dict[str, dict] = {}
    if args.recipes:
        from_file = read_recipes_file(args.recipes)
        for name, over in from_file.items():
            check_recipe(name, over, args.recipes)
        available.update(from_file)
    if args.recipe:
        names = list(dict.fromkeys(args.recipe))
    elif from_file:
        names = list(from_file)
    else:
        names = list(BUILTIN_ORDER)
    chosen, notes = [], []
    for name in names:
        if name not in available:
            raise ScalenasError(f"--recipe {name}: unknown (built-in: {', '.join(BUILTIN_ORDER)}"
                                + (f"; in {args.recipes}: {', '.join(from_file)}" if from_file else "") + ")")
        if name in skipped and name not in from_file:
            notes.append(f"`{name}` skipped: {skipped[name]}")
            log(f"[recipe {name}] skipped: {skipped[name]}")
            continue
        chosen.append((name, available[name]))
    return chosen, notes


def space_copy(space_arg: str, edit: dict[str, Any], out: Path) -> str:
    """A modified copy of the space YAML (same name, so the subnets' JSON fits it); returns its path."""
    src = resolve_space_path(space_arg)
    raw = yaml.safe_load(src.read_text())
    raw.update(edit)
    raw["description"] = f"{raw.get('description', '')} [supernet_quality edit: {json.dumps(edit)}]".strip()
    path = out / "spaces" / f"{Path(src).stem}-{digest(edit, 8)}.yaml"
    text = yaml.safe_dump(raw, sort_keys=False)
    if not path.is_file() or path.read_text() != text:
        atomic_write_text(path, text)
    load_space(str(path))  # validate (an error names the file and key)
    return str(path)


def recipe_config(args, over: dict[str, Any], out: Path) -> TrainConfig:
    over = dict(over)
    edit = over.pop(SPACE_EDIT, None)
    cfg_over = bench_overrides(args)
    if args.steps is not None:  # else the job's (or TrainConfig's) steps and warm-up
        cfg_over.update({"steps": args.steps, "warmup_steps": base_warmup(args.steps)})
    if edit:
        cfg_over["space"] = space_copy(args.space, edit, out)
    cfg_over.update(over)
    return load_job(args.job, cfg_over)


def bench_overrides(args) -> dict[str, Any]:
    """The settings every run of the benchmark shares (supernet and standalone)."""
    return {"data": args.data, "space": args.space, "data_seed": args.data_seed, "seed": args.seed,
            "batch_size": args.batch_size, "threads": args.threads, "device": args.device, "tensorboard": False,
            "panel_random": 0}


# ------------------------------------------------------------------------------------------ subnets
def subnet_set(space: SearchSpace, n: int, seed: int) -> list[tuple[str, int, Subnet]]:
    """``n`` subnets (a multiple of the stage count), equally many per scaling stage: the stage's smallest and
    largest, then seeded random ones; all distinct as built networks. Per-stage generators, so a larger ``n``
    keeps the smaller set's subnets."""
    stages = len(space.scaling)
    per = n // stages
    seen: set[str] = set()
    out = []
    for s in range(stages):
        small, large = extreme_subnets(space, s)
        picked = []
        for sub in (small, large):
            k = derive_subnet(space, sub).key()
            if k not in seen:
                seen.add(k)
                picked.append(sub)
        rng = random.Random(seed * 1009 + s)
        tries = 0
        while len(picked) < per:
            tries += 1
            if tries > 1000 * per:
                raise ScalenasError(f"stage {s} of {space.name} has fewer than {per} distinct subnets")
            _, sub = sample_subnet(space, rng, stage=s)
            k = derive_subnet(space, sub).key()
            if k not in seen:
                seen.add(k)
                picked.append(sub)
        names = ["smallest", "largest"] + [f"random{j}" for j in range(per - 2)]
        out += [(f"s{s}-{nm}", s, sub) for nm, sub in zip(names, picked)]
    return out


# ------------------------------------------------------------------------------------------ standalone
def standalone_config(args) -> TrainConfig:
    over = bench_overrides(args)
    over.update({"steps": args.standalone_steps, "warmup_steps": base_warmup(args.standalone_steps)})
    return load_job(args.job, over)


def standalone_results(args, subnets, out: Path, earlier: dict[str, dict]) -> tuple[dict[str, dict], int, int]:
    """name -> result.json of every subnet (trained here or cached); (results, trained, cached)."""
    from scalenas.train.standalone import train_or_reuse

    cfg = standalone_config(args)
    rec = {k: v for k, v in cfg.to_dict().items() if k not in EVAL_ONLY_KEYS}
    results, trained, cached = {}, 0, 0
    for i, (name, stage, sub) in enumerate(subnets):
        if sub.to_json() in earlier:  # from --standalone-csv
            results[name] = earlier[sub.to_json()]
            cached += 1
            continue
        # The arch names the space as given (a shipped name or a YAML path), so train_standalone can load it.
        arch = json.dumps({**sub.to_dict(), "space": args.space})
        key = {"arch": sub.to_dict(), "space": space_key(args.space), "config": rec}
        run = out / "standalone" / f"st-{digest(key)}"
        tag = f"[standalone {i + 1}/{len(subnets)}] {name} {sub.short()}"
        t0 = time.perf_counter()
        try:
            results[name], how = train_or_reuse(cfg, arch, "scratch", run)
        except KeyboardInterrupt:
            raise ScalenasError(f"{run}: standalone training interrupted; rerun to resume") from None
        if how == "reused":
            cached += 1  # counted in the summary line, not one line each
            continue
        trained += 1
        log(f"{tag}: {'resumed and ' if how == 'resumed' else ''}trained {cfg.steps} steps in "
            f"{time.perf_counter() - t0:.1f} s, holdout {results[name]['holdout_top1']:.4f}")
    return results, trained, cached


def earlier_standalone(path: str | None) -> dict[str, dict]:
    """arch JSON -> {holdout_top1, test_top1} from a ``PREFIX_subnets.csv`` an earlier run of this script wrote
    (``--standalone-csv``: the standalone numbers do not depend on the supernet recipe, so a new ablation can
    reuse them instead of retraining every subnet; the caller keeps ``--standalone-steps`` and the seeds the same).
    """
    if not path:
        return {}
    p = Path(path)
    if not p.is_file():
        raise ScalenasError(f"--standalone-csv {path}: no such file")
    try:
        frame = pd.read_csv(p)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ScalenasError(f"--standalone-csv {path}: not a CSV ({exc})") from None
    need = {"arch", "standalone_top1", "standalone_test_top1"}
    if not need <= set(frame.columns):
        raise ScalenasError(f"--standalone-csv {path}: needs the columns {', '.join(sorted(need))} "
                            "(a PREFIX_subnets.csv of this script)")
    return {r.arch: {"holdout_top1": float(r.standalone_top1), "test_top1": float(r.standalone_test_top1)}
            for r in frame.drop_duplicates("arch").itertuples()}


def space_key(space_arg: str) -> str:
    return load_space(space_arg).content_key


# ------------------------------------------------------------------------------------------ supernet
def supernet_run(cfg: TrainConfig, recipe: str, out: Path) -> tuple[Path, dict[str, Any], bool]:
    """Train (or resume, or reuse) the recipe's supernet; (run dir, bench_train.json, cached)."""
    import torch

    from scalenas.train.checkpoint import CKPT_NAME
    from scalenas.train.supernet import train_supernet

    rec = {k: v for k, v in cfg.to_dict().items() if k not in EVAL_ONLY_KEYS}
    rec["space"] = space_key(cfg.space)
    run = out / "supernets" / f"sn-{digest(rec)}"
    marker = run / "bench_train.json"
    if marker.is_file():
        info = json.loads(marker.read_text())
        log(f"[supernet {recipe}] cached: {run.name} (trained for recipe {info.get('recipe')}, "
            f"{info.get('train_wall_s')} s)")
        return run, info, True
    resume = (run / CKPT_NAME).is_file()
    log(f"[supernet {recipe}] {'resuming' if resume else 'training'} {cfg.steps} steps "
        f"(batch {cfg.batch_size}, {cfg.threads or torch.get_num_threads()} threads) -> {run}")
    t0 = time.perf_counter()
    summary = train_supernet(cfg, run, resume=resume, progress=False)
    wall = time.perf_counter() - t0
    if not (summary.get("finished") or summary.get("already_finished")):
        raise ScalenasError(f"{run}: supernet training interrupted; rerun to resume")
    info = {"recipe": recipe, "train_wall_s": round(wall, 2), "threads": torch.get_num_threads(),
            "steps": summary.get("total_steps", cfg.steps), "resumed": resume, "config": rec}
    atomic_write_json(marker, info)
    log(f"[supernet {recipe}] done in {wall:.1f} s")
    return run, info, False


def evaluate_subnets(run: Path, cfg: TrainConfig, args, subnets, recipe: str) -> dict[str, dict]:
    """name -> SupernetEvaluator.evaluate of every subnet (cached per calibration setting in the run dir)."""
    from scalenas.search.fitness import SupernetEvaluator
    from scalenas.train.checkpoint import CKPT_NAME

    cache_path = run / f"bench_eval-c{cfg.bn_calib_batches}-b{args.calib_batch_size}.json"
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    evaluator = None
    out = {}
    for i, (name, stage, sub) in enumerate(subnets):
        key = sub.to_json()
        if key not in cache:
            if evaluator is None:
                evaluator = SupernetEvaluator(str(run / CKPT_NAME), calib_batches=cfg.bn_calib_batches,
                                              calib_batch_size=args.calib_batch_size, device=eval_device(args),
                                              threads=args.threads)
            t0 = time.perf_counter()
            res = evaluator.evaluate(key)
            cache[key] = {k: res[k] for k in ("top1", "loss", "top1_se", "loss_se", "n")}
            atomic_write_json(cache_path, cache)
            log(f"[eval {recipe} {i + 1}/{len(subnets)}] {name}: supernet top-1 {res['top1']:.4f} "
                f"({time.perf_counter() - t0:.1f} s)")
        out[name] = cache[key]
    if evaluator is None:
        log(f"[eval {recipe}] {len(subnets)} evaluations cached")
    return out


def eval_device(args) -> str:
    if args.device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return args.device


# ------------------------------------------------------------------------------------------ statistics
def rank_stats(sn: np.ndarray, st: np.ndarray) -> dict[str, float]:
    def clean(x) -> float:
        x = float(x)
        return x if math.isfinite(x) else math.nan

    if len(sn) < 2 or np.ptp(sn) == 0 or np.ptp(st) == 0:  # a constant ranking has no correlation
        return {"tau": math.nan, "tau_p": math.nan, "rho": math.nan, "rho_p": math.nan}
    tau = stats.kendalltau(sn, st)
    rho = stats.spearmanr(sn, st)
    return {"tau": clean(tau.statistic), "tau_p": clean(tau.pvalue), "rho": clean(rho.statistic),
            "rho_p": clean(rho.pvalue)}


def summarize(recipe: str, over: dict, cfg: TrainConfig, info: dict, run: Path, sub_rows: pd.DataFrame,
              stages: int, args, cached: bool, st_cached: int) -> dict[str, Any]:
    r = rank_stats(sub_rows["supernet_top1"].to_numpy(float), sub_rows["standalone_top1"].to_numpy(float))
    within = [rank_stats(g["supernet_top1"].to_numpy(float), g["standalone_top1"].to_numpy(float))["tau"]
              for _, g in sub_rows.groupby("stage")]
    within = [t for t in within if not math.isnan(t)]
    row = {"recipe": recipe, "overrides": json.dumps(over, sort_keys=True), "steps": info.get("steps", cfg.steps),
           "train_wall_s": info.get("train_wall_s"), "threads": info.get("threads"),
           "kendall_tau": round4(r["tau"]), "kendall_p": sig(r["tau_p"]), "spearman_rho": round4(r["rho"]),
           "spearman_p": sig(r["rho_p"]), "kendall_tau_within": round4(float(np.mean(within))) if within else math.nan,
           "mean_gap": round4(float(sub_rows["gap"].mean()))}
    for s in range(stages):
        g = sub_rows.loc[sub_rows["stage"] == s, "gap"]
        row[f"gap_stage{s}"] = round4(float(g.mean())) if len(g) else math.nan
    row.update({"n_subnets": len(sub_rows), "bn_calib_batches": cfg.bn_calib_batches,
                "standalone_steps": args.standalone_steps, "standalone_cached": st_cached,
                "supernet_cached": cached, "supernet_dir": str(run), "data": args.data, "space": args.space})
    return row


def round4(x: float) -> float:
    return x if math.isnan(x) else round(x, 4)


def sig(x: float) -> float:
    return x if math.isnan(x) else float(f"{x:.4g}")


def fmt(x: Any, nd: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def markdown(rows: list[dict], stages: int, argv: list[str], notes: list[str], args) -> str:
    cmd = "python jobs/bench/supernet_quality.py" + (" " + shlex.join(argv) if argv else "")
    head = ["recipe", "overrides", "steps", "train s", "Kendall tau (p)", "Spearman rho (p)", "tau within stage",
            "mean gap"] + [f"gap s{s}" for s in range(stages)] + ["targets"]
    lines = ["# Supernet quality: supernet vs standalone ranking of subnets", "",
             f"Command: `{cmd}`", "",
             (f"Data `{args.data}`, space `{args.space}`, {rows[0]['n_subnets'] if rows else args.subnets} subnets "
             f"({args.subnets // stages if stages else 0} per scaling stage: its smallest, its largest and seeded "
             f"random ones; seed {args.seed}), each trained standalone from scratch for {args.standalone_steps} "
             f"steps. Supernet fitness: holdout top-1 after BN recalibration (`SupernetEvaluator`, calibration "
             f"batches of {args.calib_batch_size}), the search's fitness; standalone: holdout top-1 of the same "
             f"split (data_seed {args.data_seed}). Gaps are standalone - supernet in percentage points; "
             f"train s is the wall time of `train_supernet` (data loading and end-of-training panel included)."), "",
             f"Targets: Kendall tau >= {TARGET_TAU}, family mean gap <= {TARGET_GAP:g} points.", "",
             "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        ok = (not math.isnan(r["kendall_tau"]) and r["kendall_tau"] >= TARGET_TAU,
              not math.isnan(r["mean_gap"]) and r["mean_gap"] <= TARGET_GAP)
        targets = {(True, True): "both met", (True, False): "tau only", (False, True): "gap only",
                   (False, False): "neither"}[ok]
        over = r["overrides"] if r["overrides"] != "{}" else "(defaults)"
        wall = fmt(r["train_wall_s"], 0) if isinstance(r["train_wall_s"], float) else fmt(r["train_wall_s"])
        if r["supernet_cached"]:
            wall += " (cached)"
        cells = [r["recipe"], f"`{over}`", str(r["steps"]), wall,
                 f"{fmt(r['kendall_tau'])} ({fmt(r['kendall_p'], 3)})",
                 f"{fmt(r['spearman_rho'])} ({fmt(r['spearman_p'], 3)})", fmt(r["kendall_tau_within"]),
                 fmt(r["mean_gap"], 2)] + [fmt(r[f"gap_stage{s}"], 2) for s in range(stages)] + [targets]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Notes:", ""]
    lines += [f"- {n}" for n in notes]
    if args.standalone_csv:
        lines.append(f"- The standalone top-1 of the subnets came from `{args.standalone_csv}` (measured by an "
                     f"earlier run of this script with the same {args.standalone_steps} standalone steps, seeds and "
                     "split; the standalone models do not depend on the supernet recipe).")
    shared = [r["recipe"] for r in rows if r["supernet_cached"] and r["recipe"] != "base"]
    if shared:
        lines.append(f"- Reused a checkpoint trained earlier (same training config, or an earlier invocation): "
                     f"{', '.join(shared)}. `calib_more` changes only the evaluation (bn_calib_batches), so it "
                     "shares `base`'s checkpoint; its train s is that checkpoint's.")
    lines += [("- Stage sampling weights are not a TrainConfig key; `stage_weights` sets the space's own "
              "`stage_weights` (uniform: 1, 1.000001, ...; the space validator refuses equal entries) in a copy of the space YAML, as `coupling1` sets `coupling: 1`. The "
              "standalone models do not depend on either (coupling and stage weights only shape the supernet)."),
              ("- Pooled Kendall tau mixes stages (size dominates accuracy); `tau within stage` is the mean of the "
              "per-stage taus, closer to what the search compares under one FLOPs target."),
              f"- Ran with {rows[0]['threads'] if rows else args.threads} torch thread(s)." if rows else ""]
    return "\n".join(line for line in lines) + "\n"


# ------------------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="built-in recipes:\n" + "\n".join(f"  {k:14s} {v}"
                                                                        for k, v in BUILTIN_HELP.items()))
    p.add_argument("--recipe", action="append", default=None, metavar="NAME",
                   help="a recipe to run (repeatable; built-in or from --recipes); default: all of --recipes, "
                   "else all built-ins")
    p.add_argument("--recipes", default=None, metavar="FILE.yaml",
                   help="YAML mapping recipe name -> TrainConfig overrides (plus space_edit: {KEY: VALUE})")
    p.add_argument("--job", default=None, help="job YAML under every run (default: TrainConfig's defaults)")
    p.add_argument("--data", default="animals")
    p.add_argument("--space", default="animals-tiny")
    p.add_argument("--steps", type=int, default=None,
                   help=f"base supernet steps (default: the job's, else {DEFAULT_STEPS}); sets the warm-up to "
                   f"min({DEFAULT_WARMUP}, steps/5)")
    p.add_argument("--subnets", type=int, default=20, help="subnets (rounded up to a multiple of the stage count)")
    p.add_argument("--standalone-steps", type=int, default=300)
    p.add_argument("--standalone-csv", default=None, metavar="PREFIX_subnets.csv",
                   help="reuse the standalone top-1 of an earlier run's subnet table (same --standalone-steps, "
                   "seeds and data); subnets not in it are trained")
    p.add_argument("--batch-size", type=int, default=TrainConfig().batch_size)
    p.add_argument("--calib-batch-size", type=int, default=128, help="BN calibration batch size (the search's)")
    p.add_argument("--seed", type=int, default=0, help="training seed and the subnet set's seed")
    p.add_argument("--data-seed", type=int, default=0, help="the split, the same for every run")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    p.add_argument("--out", default=str(REPO / "results/runs/supernet_quality"), help="cache folder of all runs")
    p.add_argument("--out-csv", default=str(REPO / "results/bench/supernet_quality"),
                   help="prefix of the outputs: PREFIX.csv, PREFIX_subnets.csv, PREFIX.md")
    args = p.parse_args(argv)
    for k in ("steps", "subnets", "standalone_steps", "batch_size", "calib_batch_size", "threads"):
        if getattr(args, k) is not None and getattr(args, k) < 1:
            p.error(f"--{k.replace('_', '-')} must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    try:
        return run(args, argv)
    except ScalenasError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run(args, argv: list[str]) -> int:
    out = make_dir(args.out)
    space = load_space(args.space)
    stages = len(space.scaling)
    if args.subnets < 2 * stages:
        raise ScalenasError(f"--subnets {args.subnets}: at least {2 * stages} (smallest and largest of each of the "
                            f"{stages} scaling stages)")
    if args.subnets % stages:
        n = -(-args.subnets // stages) * stages
        log(f"--subnets {args.subnets} rounded up to {n} ({stages} stages, equal numbers per stage)")
        args.subnets = n
    base = recipe_config(args, {}, out)
    recipes, notes = select_recipes(args, base, space)
    subnets = subnet_set(space, args.subnets, args.seed)
    log(f"{len(recipes)} recipe(s): {', '.join(n for n, _ in recipes)}; {len(subnets)} subnets on {args.space}, "
        f"data {args.data}, {args.threads} thread(s)")
    meta = {name: (stage, *subnet_flops_params(space, sub)) for name, stage, sub in subnets}
    prefix = Path(args.out_csv)
    rows, sub_frames = [], []
    earlier = earlier_standalone(args.standalone_csv)  # read once: --out-csv may rewrite that very file below
    for name, over in recipes:
        check_recipe(name, over, "recipe")
        st, trained, cached = standalone_results(args, subnets, out, earlier)
        log(f"[standalone] {trained} trained, {cached} cached")
        cfg = recipe_config(args, over, out)
        run_dir, info, sn_cached = supernet_run(cfg, name, out)
        ev = evaluate_subnets(run_dir, cfg, args, subnets, name)
        recs = []
        for sname, stage, sub in subnets:
            _, flops, params = meta[sname]
            e, s = ev[sname], st[sname]
            recs.append({"recipe": name, "subnet": sname, "stage": stage, "flops": flops, "params": params,
                         "resolution": sub.resolution, "depth": sub.depth, "width": sub.width,
                         "supernet_top1": round(e["top1"], 6), "supernet_top1_se": round(e["top1_se"], 6),
                         "supernet_loss": round(e["loss"], 6), "standalone_top1": s["holdout_top1"],
                         "standalone_test_top1": s["test_top1"],
                         "gap": round(100.0 * (s["holdout_top1"] - e["top1"]), 4), "arch": sub.to_json()})
        frame = pd.DataFrame(recs)
        sub_frames.append(frame)
        row = summarize(name, over, cfg, info, run_dir, frame, stages, args, sn_cached, cached)
        rows.append(row)
        log(f"[result {name}] Kendall tau {fmt(row['kendall_tau'])} (p {fmt(row['kendall_p'])}), Spearman rho "
            f"{fmt(row['spearman_rho'])}, mean gap {fmt(row['mean_gap'], 2)} points")
        atomic_write_csv(f"{prefix}.csv", pd.DataFrame(rows))
        atomic_write_csv(f"{prefix}_subnets.csv", pd.concat(sub_frames, ignore_index=True))
        atomic_write_text(f"{prefix}.md", markdown(rows, stages, argv, notes, args))
    if not rows:
        log("no recipe to run")
        return 1
    log(f"wrote {prefix}.csv, {prefix}_subnets.csv, {prefix}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
