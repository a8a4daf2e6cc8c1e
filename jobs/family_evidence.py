"""Evidence: is the searched (markov) family better than compound scaling and random families at every size,
searched stages and extrapolated ones, when every member is trained from scratch with one recipe?

Two ways in:

* ``--search DIR``: a finished ``markov`` search folder whose family already holds extrapolated members
  (``scalenas extrapolate --steps 2 --run DIR`` writes them; without them: one line, exit code 2). The
  ``compound`` and ``random`` baseline searches are run on the same supernet with the markov search's recorded
  targets and options (``search_config.json``) into ``OUT/search-compound`` and ``OUT/search-random``;
* ``--supernet RUN``: the whole pipeline: ``markov``, ``compound`` and ``random`` searches with the same FLOPs
  targets (``--target-flops``) and options into ``OUT/search-<strategy>``, then ``scalenas extrapolate``
  (``--extrapolate-steps``, default 2) of the markov search. ``--stage-weights`` (e.g. ``1,1,1,1``: stage 0 counts
  in the fitness too) applies to all three searches, which then go to ``OUT/search-<strategy>-w1-1-1-1``; a
  search folder that holds other options or targets than asked is refused (one line), never silently reused.

The families (stages 0..S searched, S+1.. extrapolated):

* markov: the search's family.csv (searched + extrapolated rows, as ``scalenas extrapolate`` wrote them);
* compound: the compound search's best family, extended beyond S by the EfficientNet rule: depth, width and
  resolution multipliers d = alpha^phi, w = beta^phi, r = gamma^phi along the fixed compound direction
  (log alpha, log beta, log gamma) = the compound family's stage-1 multipliers (the grid search that fixes
  them, as in CompoundStrategy), phi growing per member. EfficientNet normalises alpha * beta^2 * gamma^2 = 2
  so that phi + 1 doubles FLOPs; here, as CompoundStrategy does for the searched stages, phi is solved per member
  so that FLOPs land on the markov member's FLOPs under the real rounding rules. This is
  :func:`scalenas.search.extrapolate.extrapolate` with step weights (1, 0, ..., 0): its direction is then
  exactly the stage-1 compound direction (no new extension code);
* random: the random strategy's best family (same targets, same evaluation budget), extended with the same rule
  as markov (``scalenas extrapolate``'s direction, weighted toward the last steps) to the markov members' FLOPs,
  so that only the search differs.

Every member of the three families is trained from scratch with one recipe (``scalenas train``'s library,
:func:`scalenas.train.standalone.train_standalone`: the supernet's data split, SGD + Nesterov, warm-up + cosine,
label smoothing; ``--steps``, ``--batch-size``) once per ``--seeds`` value. Trainings are cached under
``OUT/train/<network+recipe hash>-steps<N>-seed<k>``: a finished one (``result.json``) is reused, an interrupted one
resumed, and the same built network appearing in two families (or under two equivalent multipliers) is trained
once per seed.

Writes ``results/family_<data>.csv`` (strategy, stage, seed, extrapolated, flops, params, test_top1,
holdout_top1, ...; ``--csv``) and ``results/family_<data>.md`` (``--md``): test top-1 per stage and strategy as
mean ± sd over seeds, the paired (same seed) differences markov - compound and markov - random per stage and
their mean over stages, whether the target holds, and the command that produced it. ``OUT/families.json`` lists
every member trained.

``--earlier-rows CSV`` adds the seeds of an earlier run (its rows CSV) without retraining them, e.g. one more seed on
a fresh machine whose training cache is gone: every earlier (strategy, stage) must hold this run's family member
(same architecture JSON), with the same steps and no seed in common; else one line and exit code 2.

    python jobs/family_evidence.py --supernet results/runs/animals/checkpoint.pt --seeds 0 1 2   # the evidence
    python jobs/family_evidence.py --search results/runs/RUN/search --steps 300 --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # jobs/: jobkit
import jobkit  # noqa: E402  (puts the checkout and jobs/ on sys.path)
REPO = jobkit.REPO

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from scalenas.errors import ScalenasError
from scalenas.runs import SearchFolder

PROG = "family_evidence.py"
STRATEGIES = ("markov", "compound", "random")
BASELINES = ("compound", "random")
TARGET_MEAN_POINTS = 0.5  # markov - compound, mean over stages, in top-1 points
SEARCH_FLAGS = ("population", "generations", "elites", "seed")


# ------------------------------------------------------------------------------------------ command line
def parse_args(argv: list[str] | None):
    from scalenas.cli.common import number
    from scalenas.cli.main import OneLineParser
    from scalenas.cli.search import stage_weights_arg

    p = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0],
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--search", default=None, help="a finished markov search folder with extrapolated members")
    src.add_argument("--supernet", default=None, help="supernet checkpoint or its run folder: run the searches "
                     "and the extrapolation here")
    p.add_argument("--out", default=str(REPO / "results" / "runs" / "family_evidence"),
                   help="cache of searches and trainings (default results/runs/family_evidence)")
    p.add_argument("--data", default=None, help="data of the standalone trainings (default: the supernet's, e.g. "
                   "animals)")
    p.add_argument("--space", default=None, help="expected search space (e.g. animals-tiny): refused if the "
                   "searches ran on another one")
    # training recipe
    p.add_argument("--steps", type=number("--steps", int, min=1), default=300,
                   help="training steps per member (default 300)")
    p.add_argument("--batch-size", type=number("--batch-size", int, min=1), default=128,
                   help="batch size (default 128)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default 0 1 2)")
    p.add_argument("--job", default="digits", help="job YAML with the recipe (default digits: SGD + Nesterov, "
                   "warm-up + cosine, label smoothing); data and split follow the supernet")
    p.add_argument("--jobs", type=number("--jobs", int, min=1), default=1,
                   help="trainings in parallel, each with --threads torch threads (default 1)")
    p.add_argument("--threads", type=number("--threads", int, min=1), default=1, help="torch threads (default 1)")
    # searches (--supernet; with --search the markov search's recorded options are used)
    p.add_argument("--target-flops", default="6M", help="--supernet: top of the family or T0,...,TS (default 6M)")
    p.add_argument("--flops-tolerance", type=number("--flops-tolerance", float, min=0.0, max=1.0, min_open=True,
                                                    max_open=True), default=0.1)
    p.add_argument("--population", type=number("--population", int, min=1), default=16)
    p.add_argument("--generations", type=number("--generations", int, min=1), default=10)
    p.add_argument("--elites", type=number("--elites", int, min=1), default=4)
    p.add_argument("--seed", type=int, default=0, help="search seed (default 0)")
    p.add_argument("--calib-batches", type=number("--calib-batches", int, min=1), default=4)
    p.add_argument("--stage-weights", default=None, type=stage_weights_arg,
                   help="--supernet: fitness weights of stages 0..S for every search, comma separated (default: "
                        "scalenas search's, 0,1,...,1); the searches go to OUT/search-<strategy>-w<weights>")
    p.add_argument("--extrapolate-steps", type=number("--extrapolate-steps", int, min=1, max=20), default=2,
                   help="--supernet: extrapolated members of the markov family (default 2)")
    p.add_argument("--workers", type=number("--workers", int, min=0), default=None,
                   help="Ray evaluation workers of the searches (0: in-process; default: scalenas search's)")
    p.add_argument("--earlier-rows", default=None,
                   help="a previous run's rows CSV (other seeds of the same families, same steps): summarised "
                        "together with this run's seeds, without retraining them; refused when a family member, "
                        "the steps or a seed differ")
    p.add_argument("--csv", default=None, help="rows (default results/family_<data>.csv)")
    p.add_argument("--md", default=None, help="summary (default results/family_<data>.md)")
    args = p.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        raise ScalenasError(f"--seeds: repeated seed in {args.seeds}")
    return args


# ------------------------------------------------------------------------------------------ searches
def search_folder(strategy: str, weights: list[float] | None, n_stages: int) -> str:
    """``search-<strategy>`` under the default stage weights (0, 1, ..., 1), ``search-<strategy>-w1-1-1-1`` under
    others."""
    if weights is None or [float(w) for w in weights] == [0.0] + [1.0] * n_stages:
        return f"search-{strategy}"
    return f"search-{strategy}-w" + "-".join(f"{w:g}" for w in weights)


def _done(folder: Path) -> bool:
    return bool(SearchFolder(folder).state_done())


def _config(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / SearchFolder.CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ScalenasError(f"{folder}/search_config.json: unreadable ({type(exc).__name__})") from None


def run_search(strategy: str, ckpt: Path, out: Path, targets: list[int], options: dict[str, Any],
               calib_batches: int, workers: int | None) -> Path:
    """``scalenas search --strategy STRATEGY`` into ``out`` (reused when finished there, resumed when not)."""
    from scalenas.report.search_report import write_reports
    from scalenas.search.job import EvaluationSettings, search_supernet
    from scalenas.search.strategy import SearchOptions

    if (out / SearchFolder.CONFIG).is_file():
        cfg = _config(out)
        used = Path(cfg.get("supernet", ""))
        if used.resolve() != ckpt.resolve() or cfg.get("strategy") != strategy:
            raise ScalenasError(f"{out} holds a search of another supernet or strategy ({used}); give another --out")
        wanted = SearchOptions.from_dict(options).resolved(len(targets) - 1).to_dict()
        differ = sorted(k for k, v in wanted.items() if (cfg.get("options") or {}).get(k, v) != v)
        if differ or [int(t) for t in cfg.get("targets", targets)] != [int(t) for t in targets]:
            raise ScalenasError(f"{out} holds a {strategy} search with other "
                                f"{', '.join(differ) or 'targets'}; give another --out")
    resume = (out / SearchFolder.STATE).is_file()
    if resume and _done(out):
        print(f"{strategy} search: reusing the finished one in {out}", flush=True)
        return out
    print(f"{strategy} search -> {out}" + (" (resumed)" if resume else ""), flush=True)
    evaluation = EvaluationSettings(workers=workers, calib_batches=calib_batches, device="cpu")
    result = search_supernet(ckpt, ckpt.parent, ",".join(str(int(t)) for t in targets), strategy=strategy,
                             options=SearchOptions.from_dict(options), evaluation=evaluation, out=out,
                             resume=resume, progress=False, on_generation=write_reports,
                             announce=lambda line: print(f"  {line}", flush=True))
    fit = result.get("fitness")
    print(f"  {strategy}: {result['evaluations']} evaluations, best fitness "
          f"{'none' if fit is None else f'{fit:.4f}'} ({result['seconds']:.0f} s)", flush=True)
    return out


def extrapolated_rows(folder: Path):
    """The family.csv of ``folder`` and whether it holds extrapolated rows."""
    from scalenas.report.family import read_family_csv

    fam = read_family_csv(folder / SearchFolder.FAMILY)
    kinds = fam["kind"].fillna("searched") if "kind" in fam.columns else None
    return fam, kinds is not None and bool((kinds == "extrapolated").any())


def check_markov(folder: Path, space_name: str | None) -> dict[str, Any]:
    """A finished markov search with extrapolated members, else a ScalenasError naming what is missing."""
    from scalenas.report.family import read_search

    if not folder.is_dir():
        raise ScalenasError(f"--search {folder}: not a directory")
    found = read_search(folder)
    strategy = found["best"].get("strategy")
    if strategy != "markov":
        raise ScalenasError(f"--search {folder}: a {strategy!r} search; give a markov search")
    if not (folder / SearchFolder.FAMILY).is_file():
        raise ScalenasError(f"--search {folder}: no family.csv")
    _, has = extrapolated_rows(folder)
    if not has:
        raise ScalenasError(f"--search {folder}: no extrapolated members in its family.csv (run scalenas "
                            f"extrapolate --steps 2 --run {folder} first)")
    if space_name is not None and found["best"].get("space") != space_name:
        raise ScalenasError(f"--space {space_name}: the search in {folder} ran on {found['best'].get('space')!r}")
    return found


# ------------------------------------------------------------------------------------------ families
def _member(stage: int, row: dict[str, Any], extrapolated: bool, space) -> dict[str, Any]:
    """One member: canonical arch JSON, FLOPs and params counted here (the same counter for every family)."""
    from scalenas.spaces.arch import derive_subnet, parse_subnet
    from scalenas.spaces.flops import subnet_flops_params

    arch = row["arch"]
    sub = parse_subnet(json.loads(arch) if isinstance(arch, str) else arch, space, allow_outside=True)
    flops, params = subnet_flops_params(space, sub)
    target = row.get("target_flops")
    return {"stage": int(stage), "extrapolated": bool(extrapolated), "arch": sub.to_json(),
            "net": f"{space.name}|{derive_subnet(space, sub).key()}",
            "flops": int(flops), "params": int(params),
            "target_flops": None if target is None or math.isnan(float(target)) else int(target)}


def markov_family(folder: Path, space) -> list[dict[str, Any]]:
    fam, _ = extrapolated_rows(folder)
    kinds = fam["kind"].fillna("searched") if "kind" in fam.columns else ["searched"] * len(fam)
    members = [_member(int(r["stage"]), r, k == "extrapolated", space) for r, k in zip(fam.to_dict("records"), kinds)]
    return sorted(members, key=lambda m: m["stage"])


def extend(space, best: dict[str, Any], targets: list[int], tolerance: float, rule: str) -> list[dict[str, Any]]:
    """Members S+1.. of a searched family, each at the FLOPs in ``targets``.

    ``rule`` ``compound``: step weights (1, 0, ..., 0), i.e. along (log alpha, log beta, log gamma) of stage 1
    (EfficientNet's d = alpha^phi, w = beta^phi, r = gamma^phi, phi solved per member for its FLOPs);
    ``default``: scalenas extrapolate's default direction (weights 1..S, toward the last steps). One step at a
    time, each with growth = target / FLOPs of the previous member; the direction stays the one of the searched
    chain (zero weight on the appended steps).
    """
    from scalenas.search.extrapolate import extrapolate
    from scalenas.spaces.arch import Subnet
    from scalenas.spaces.flops import subnet_flops_params

    base = [list(x) for x in best["base"]]
    chain = [(float(x["depth"]), float(x["width"]), int(x["resolution"])) for x in best["chain"]]
    s = len(chain)
    weights = [1.0] + [0.0] * (s - 1) if rule == "compound" else [float(k) for k in range(1, s + 1)]
    d, w, r = chain[-1]
    prev = subnet_flops_params(space, Subnet(space.name, tuple(tuple(x) for x in base), d, w, r))[0]
    out = []
    for target in targets:
        growth = float(target) / float(prev)
        if not growth > 1.0:
            raise ScalenasError(f"{rule} extension: target {target} FLOPs is not above the last member's {prev}")
        m = extrapolate(space, base, chain, 1, growth=growth, tolerance=tolerance, weights=weights)[0]
        m["target_flops"] = int(target)
        out.append(_member(m["stage"], m, True, space))
        chain.append((float(m["depth_mult"]), float(m["width_mult"]), int(m["resolution"])))
        weights.append(0.0)
        prev = m["flops"]
    return out


def searched_family(best: dict[str, Any], space) -> list[dict[str, Any]]:
    """The searched members 0..S of a search's best family (best.json), with the stage targets."""
    targets = best.get("targets") or []
    return [_member(int(r["stage"]), {"target_flops": targets[int(r["stage"])] if int(r["stage"]) < len(targets)
                                      else None, **r}, False, space) for r in best["family"]]


# ------------------------------------------------------------------------------------------ training
def recipe(args, sn_cfg: dict[str, Any], data: str) -> dict[str, Any]:
    """The one standalone recipe (load_job overrides) of every member; the seed is added per training."""
    data_seed = sn_cfg.get("data_seed")
    if data_seed is None:  # the supernet's split: its data_seed, else its seed
        data_seed = sn_cfg.get("seed") or 0
    return {"steps": args.steps, "batch_size": args.batch_size, "device": "cpu",
            "data": data, "data_seed": int(data_seed),
            "holdout_frac": sn_cfg.get("holdout_frac", 0.15), "test_frac": sn_cfg.get("test_frac", 0.15),
            "store_size": sn_cfg.get("store_size"), "warmup_steps": min(50, max(1, args.steps // 10)),
            "checkpoint_every": max(50, args.steps // 4), "log_every": max(10, args.steps // 10)}


def task_dir(cache: Path, net: str, overrides: dict[str, Any], job: str, seed: int) -> Path:
    """The training folder of one built network (``net``: space name + :meth:`Derived.key`, so two arch JSONs
    that build the same network share one training) under one recipe and seed."""
    key = hashlib.sha1(json.dumps([net, job, overrides], sort_keys=True).encode()).hexdigest()[:12]
    return cache / f"{key}-steps{overrides['steps']}-seed{seed}"


def train_one(task: dict[str, Any]) -> dict[str, Any]:
    """Train (or reuse / resume) one standalone model; also runs in a worker process."""
    import torch

    from scalenas.train.config import load_job
    from scalenas.train.standalone import train_or_reuse

    torch.set_num_threads(task["threads"])
    cfg = load_job(task["job"], {**{k: v for k, v in task["overrides"].items() if v is not None},
                                 "seed": task["seed"], "threads": task["threads"]})
    try:
        result, how = train_or_reuse(cfg, task["arch"], "scratch", task["out_dir"])
    except KeyboardInterrupt:
        if task.get("in_worker"):
            os._exit(130)  # checkpoint saved; a pool worker would otherwise take the next task
        raise
    return {**result, "reused": True} if how == "reused" else result


def run_tasks(tasks: list[dict[str, Any]], jobs: int) -> list[dict[str, Any]]:
    t0 = time.perf_counter()
    results: list[dict[str, Any] | None] = [None] * len(tasks)

    def done(i: int, res: dict[str, Any]) -> None:
        results[i] = res
        n = sum(r is not None for r in results)
        print(f"  [{n}/{len(tasks)}] {tasks[i]['label']}: test {res['test_top1']:.4f} holdout "
              f"{res['holdout_top1']:.4f}{' (cached)' if res.get('reused') else ''} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)

    if jobs == 1 or len(tasks) <= 1:
        for i, t in enumerate(tasks):
            done(i, train_one(t))
    else:
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from multiprocessing import get_context

        pool = ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"))
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # kill PID: stop the workers too
        try:
            futures = {pool.submit(train_one, {**t, "in_worker": True}): i for i, t in enumerate(tasks)}
            for f in as_completed(futures):
                done(futures[f], f.result())
        except BaseException:
            # A worker outlives its parent unless told: SIGTERM makes each save its checkpoint and exit (a rerun
            # resumes there); one that does not exit within 30 s is killed.
            procs = list((getattr(pool, "_processes", None) or {}).values())
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.join(30)
                if proc.is_alive():
                    proc.kill()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
        pool.shutdown()
    return results  # type: ignore[return-value]


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


# ------------------------------------------------------------------------------------------ summary
def _ms(values, scale: float = 100.0, signed: bool = False) -> str:
    import numpy as np

    v = np.asarray([x for x in values if not math.isnan(float(x))], dtype=float) * scale
    if v.size == 0:
        return "–"
    f = "+.2f" if signed else ".2f"
    return f"{v.mean():{f}} ± {v.std(ddof=1):.2f}" if v.size > 1 else f"{v.mean():{f}}"


def paired(frame, other: str):
    """seed x stage table of markov - ``other`` test top-1 (same seed, same stage)."""
    pv = frame.pivot_table(index="seed", columns=["strategy", "stage"], values="test_top1")
    return pv["markov"] - pv[other]


ROW_COLUMNS = ("strategy", "stage", "seed", "extrapolated", "flops", "params", "test_top1", "holdout_top1",
               "target_flops", "steps", "train_seconds", "arch", "run_dir")


def read_earlier_rows(path: str, seeds: list[int], steps: int):
    """The rows of an earlier run (``--earlier-rows``), checked for what can be checked before any search runs:
    a readable CSV with this script's columns, the same training steps, and no seed that this run trains too."""
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise ScalenasError(f"--earlier-rows {p}: no such file")
    try:
        frame = pd.read_csv(p)
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise ScalenasError(f"--earlier-rows {p}: not a readable CSV ({' '.join(str(exc).split())[:120]})") from None
    missing = [c for c in ROW_COLUMNS if c not in frame.columns]
    if missing or frame.empty:
        raise ScalenasError(f"--earlier-rows {p}: not a family evidence CSV "
                            f"({'missing column(s) ' + ', '.join(missing) if missing else 'no rows'})")
    clash = sorted(set(int(v) for v in frame["seed"]) & set(seeds))
    if clash:
        raise ScalenasError(f"--earlier-rows {p}: seed(s) {' '.join(map(str, clash))} are in --seeds too; "
                            "each seed is trained once")
    other = sorted(set(int(v) for v in frame["steps"]) - {steps})
    if other:
        raise ScalenasError(f"--earlier-rows {p}: rows trained for {' '.join(map(str, other))} steps, this run "
                            f"trains {steps}")
    return frame[list(ROW_COLUMNS)]


def check_earlier_families(earlier, families: dict[str, list[dict[str, Any]]], path: str) -> None:
    """Every (strategy, stage) of ``earlier`` holds exactly this run's family member (the same architecture, for
    every earlier seed), so the earlier seeds measured the same networks."""
    want = {(strat, int(m["stage"])): json.loads(m["arch"]) if isinstance(m["arch"], str) else m["arch"]
            for strat, fam in families.items() for m in fam}
    got_keys = {(str(a), int(b)) for a, b in zip(earlier["strategy"], earlier["stage"])}
    if got_keys != set(want):
        raise ScalenasError(f"--earlier-rows {path}: its strategies and stages differ from this run's families")
    seeds = set(int(v) for v in earlier["seed"])
    for (strat, stage), arch in want.items():
        sel = earlier[(earlier["strategy"] == strat) & (earlier["stage"] == stage)]
        if set(int(v) for v in sel["seed"]) != seeds or any(json.loads(a) != arch for a in sel["arch"]):
            raise ScalenasError(f"--earlier-rows {path}: {strat} stage {stage} holds another network (or other "
                                "seeds) than this run's family: rows of another supernet or search?")


def summarise(frame) -> dict[str, Any]:
    """Per stage and over stages: the paired differences and the target's conditions."""
    out: dict[str, Any] = {}
    for other in BASELINES:
        diff = paired(frame, other)  # seeds x stages
        per_stage = diff.mean(axis=0)
        over = diff.mean(axis=1)  # per seed: mean over stages
        out[other] = {"diff": diff, "per_stage": per_stage, "over_stages": over,
                      "every_stage": bool((per_stage >= 0).all()), "mean": float(over.mean()),
                      "stages_ahead": int((per_stage >= 0).sum()), "stages": int(per_stage.size)}
    c, r = out["compound"], out["random"]
    out["conditions"] = {
        "markov >= compound at every stage (searched and extrapolated)": c["every_stage"],
        f"markov - compound, mean over stages >= +{TARGET_MEAN_POINTS} points": c["mean"] * 100 >= TARGET_MEAN_POINTS,
        "markov >= random at every stage": r["every_stage"],
    }
    out["holds"] = all(out["conditions"].values())
    return out


def markdown(frame, summary: dict[str, Any], settings: dict[str, Any], command: str) -> str:
    from scalenas.spaces.targets import format_flops

    seeds = sorted(frame["seed"].unique())
    lines = [f"# Searched (markov) vs compound and random families, trained from scratch ({settings['data']})", "",
             (f"Generated by `jobs/family_evidence.py` on {time.strftime('%Y-%m-%d %H:%M')}; wall time "
             f"{settings['wall_s']:.0f} s. FLOPs = fvcore MACs (1 multiply-add = 1 FLOP), batch 1. Top-1 in "
             "points (%) on the test split (never used by the search); mean ± sd over training seeds "
             f"{', '.join(map(str, seeds))}."), "",
             "Command:", "", "```bash", command, "```", "",
             "Settings: " + ", ".join(f"{k} `{v}`" for k, v in settings.items() if k not in ("wall_s",)), ""]
    if len(seeds) < 3:
        lines += [f"**Only {len(seeds)} seed(s): a smoke run, not evidence (the evidence uses >= 3).**", ""]
    lines += ["## Test top-1 per stage", "",
              ("| stage | kind | markov FLOPs | markov | compound FLOPs | compound | random FLOPs | random "
              "| markov − compound | markov − random |"), "|---|---|---|---|---|---|---|---|---|---|"]
    stages = sorted(frame["stage"].unique())
    for s in stages:
        cells = [str(s)]
        g = frame[frame["stage"] == s]
        cells.append("extrapolated" if bool(g[g["strategy"] == "markov"]["extrapolated"].any()) else "searched")
        for strat in STRATEGIES:
            h = g[g["strategy"] == strat]
            cells += [format_flops(int(h["flops"].iloc[0])) if not h.empty else "–", _ms(h["test_top1"])]
        for other in BASELINES:
            d = summary[other]["diff"]
            cells.append(_ms(d[s], signed=True) if s in d.columns else "–")
        lines.append("| " + " | ".join(cells) + " |")
    mean_cells = ["mean", ""]
    for strat in STRATEGIES:
        per_seed = frame[frame["strategy"] == strat].groupby("seed")["test_top1"].mean()
        mean_cells += ["", _ms(per_seed)]
    mean_cells += [_ms(summary[o]["over_stages"], signed=True) for o in BASELINES]
    lines.append("| " + " | ".join(mean_cells) + " |")
    lines += ["", ("Differences are paired: the same training seed, the same stage; `mean` is the mean over stages "
              "per seed, then mean ± sd over seeds."), "", "## Target", ""]
    for text, ok in summary["conditions"].items():
        lines.append(f"- {text}: **{'yes' if ok else 'no'}**")
    c, r = summary["compound"], summary["random"]
    lines += ["", (f"markov ≥ compound at {c['stages_ahead']}/{c['stages']} stages (mean over stages "
              f"{c['mean'] * 100:+.2f} points); markov ≥ random at {r['stages_ahead']}/{r['stages']} stages (mean "
              f"{r['mean'] * 100:+.2f} points)."), "",
              f"**Target {'holds' if summary['holds'] else 'does not hold'}**"
              + ("" if len(seeds) >= 3 else " (smoke run)") + ".", "",
              ("Families: markov = the search's family.csv (searched + `scalenas extrapolate` members); compound = "
              "the compound search's family, extended by the EfficientNet rule (along the stage-1 direction "
              "(log alpha, log beta, log gamma), phi solved per member for the markov member's FLOPs); random = the "
              "random search's best family, extended like markov. Rows: "
              f"`{settings['csv']}` (strategy, stage, seed, extrapolated, flops, params, test_top1, holdout_top1, "
              "target_flops, steps, train_seconds, arch, run_dir).")]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ main
def evidence(args, argv: list[str]) -> int:
    import pandas as pd

    from scalenas.io import atomic_write_csv, atomic_write_json, atomic_write_text
    from scalenas.report.family import extrapolate_search, read_search, search_space
    from scalenas.spaces.targets import stage_targets
    from scalenas.train.checkpoint import (
        checkpoint_space,
        read_checkpoint,
        resolve_checkpoint,
    )

    t0 = time.perf_counter()
    out = Path(args.out)
    if args.search is not None:
        markov = Path(args.search)
        found = check_markov(markov, args.space)  # nothing is written before this passes
        cfg = _config(markov)
        ckpt = resolve_checkpoint(cfg.get("supernet", ""))
        targets = [int(t) for t in found["best"]["targets"]]
        options = dict(cfg.get("options") or {})
        calib = int(cfg.get("calib_batches") or args.calib_batches)
    else:
        ckpt = resolve_checkpoint(args.supernet)
        space = checkpoint_space(read_checkpoint(ckpt), str(ckpt))
        if args.space is not None and space.name != args.space:
            raise ScalenasError(f"--space {args.space}: the supernet {ckpt} was trained on {space.name!r}")
        targets = stage_targets(space, args.target_flops)
        options = {"population": args.population, "generations": args.generations, "elites": args.elites,
                   "seed": args.seed, "tolerance": args.flops_tolerance}
        if args.stage_weights is not None:
            options["stage_weights"] = args.stage_weights
        calib = args.calib_batches
        markov = out / search_folder("markov", args.stage_weights, len(targets) - 1)
    payload = read_checkpoint(ckpt)
    sn_cfg = payload.get("config") or {}
    del payload
    data = args.data or sn_cfg.get("data", "digits")
    if args.data and args.data != sn_cfg.get("data"):
        print(f"note: training on --data {args.data}, the supernet was trained on {sn_cfg.get('data')!r}",
              flush=True)
    label = data if data in ("digits", "animals") else "custom"
    csv_path = Path(args.csv) if args.csv else REPO / "results" / f"family_{label}.csv"
    md_path = Path(args.md) if args.md else REPO / "results" / f"family_{label}.md"
    earlier = read_earlier_rows(args.earlier_rows, args.seeds, args.steps) if args.earlier_rows else None
    print(f"family evidence: supernet {ckpt}; targets {targets}; {args.steps} steps x batch {args.batch_size}, "
          f"seeds {args.seeds}; cache {out}", flush=True)

    folders = {"markov": markov}
    if args.search is None:
        run_search("markov", ckpt, markov, targets, options, calib, args.workers)
        fam, has = extrapolated_rows(markov)
        n_extra = int((fam["kind"] == "extrapolated").sum()) if has else 0
        if n_extra != args.extrapolate_steps:
            doc = extrapolate_search(markov, args.extrapolate_steps)
            print(f"markov: extrapolated {len(doc['members'])} member(s) (growth {doc['growth']:g})", flush=True)
        check_markov(markov, args.space)
    for strat in BASELINES:
        folder = out / search_folder(strat, options.get("stage_weights"), len(targets) - 1)
        folders[strat] = run_search(strat, ckpt, folder, targets,
                                    options, calib, args.workers)

    best = {s: read_search(f)["best"] for s, f in folders.items()}
    space = search_space(markov, best["markov"])
    families = {"markov": markov_family(markov, space)}
    extra_targets = [m["flops"] for m in families["markov"] if m["extrapolated"]]
    tol = float(best["markov"].get("tolerance") or 0.1)
    for strat, rule in (("compound", "compound"), ("random", "default")):
        families[strat] = searched_family(best[strat], space) + extend(space, best[strat], extra_targets, tol, rule)
    atomic_write_json(out / "families.json", {
        "supernet": str(ckpt), "targets": targets, "searches": {s: str(f) for s, f in folders.items()},
        "feasible": {s: bool(best[s].get("feasible", True)) for s in STRATEGIES},
        "families": families,
        "extension": {"compound": "extrapolate(weights=(1, 0, ..., 0)): stage-1 direction (log alpha, log beta, "
                      "log gamma), phi per member for the markov member's FLOPs",
                      "random": "extrapolate(weights=(1, ..., S)): scalenas extrapolate's direction"}})
    for strat in STRATEGIES:
        fam = families[strat]
        print(f"{strat}: " + ", ".join(f"s{m['stage']}{'*' if m['extrapolated'] else ''} {m['flops'] / 1e6:.2f}M"
                                       for m in fam) + "  (* extrapolated)", flush=True)

    if earlier is not None:
        check_earlier_families(earlier, families, args.earlier_rows)
    overrides = recipe(args, sn_cfg, data)
    cache = out / "train"
    tasks, rows_meta = [], []
    by_dir: dict[str, int] = {}
    for strat in STRATEGIES:
        for m in families[strat]:
            for seed in args.seeds:
                d = str(task_dir(cache, m["net"], overrides, args.job, seed))
                if d not in by_dir:
                    by_dir[d] = len(tasks)
                    tasks.append({"arch": m["arch"], "seed": seed, "job": args.job, "overrides": overrides,
                                  "threads": args.threads, "out_dir": d,
                                  "label": f"{strat} s{m['stage']} seed {seed}"})
                rows_meta.append((strat, m, seed, d))
    print(f"training {len(tasks)} model(s) for {len(rows_meta)} rows into {cache}", flush=True)
    results = dict(zip((t["out_dir"] for t in tasks), run_tasks(tasks, args.jobs)))

    rows = []
    for strat, m, seed, d in rows_meta:
        r = results[d]
        rows.append({"strategy": strat, "stage": m["stage"], "seed": seed, "extrapolated": m["extrapolated"],
                     "flops": r["flops"], "params": r["params"], "test_top1": r["test_top1"],
                     "holdout_top1": r["holdout_top1"], "target_flops": m["target_flops"], "steps": r["steps"],
                     "train_seconds": r.get("train_seconds"), "arch": m["arch"], "run_dir": d})
    frame = pd.DataFrame(rows)
    if earlier is not None:  # one table in a single run's order: strategy, stage, seed
        frame = pd.concat([earlier, frame], ignore_index=True)
        order = {s: i for i, s in enumerate(STRATEGIES)}
        frame = frame.sort_values(["strategy", "stage", "seed"], key=lambda c: c.map(order) if c.name == "strategy"
                                  else c, kind="stable").reset_index(drop=True)
    atomic_write_csv(csv_path, frame)
    summary = summarise(frame)
    settings = {"data": data, "space": space.name, "supernet": str(ckpt), "markov search": str(markov),
                "targets": ", ".join(f"{t / 1e6:.3g}M" for t in targets), "steps": args.steps,
                "batch_size": args.batch_size, "job": args.job,
                "seeds": " ".join(map(str, sorted(set(int(v) for v in frame["seed"])))),
                "data_seed": overrides["data_seed"], "csv": csv_path.name, "wall_s": time.perf_counter() - t0}
    if earlier is not None:
        settings["earlier rows (not retrained; wall time is this run's)"] = args.earlier_rows
    command = "python jobs/family_evidence.py " + shlex.join(argv)
    text = markdown(frame, summary, settings, command)
    atomic_write_text(md_path, text)
    print(text)
    print(f"wrote {csv_path} and {md_path} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse_args(argv)
        return evidence(args, argv)
    except ScalenasError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted (rerun the same command to resume)\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
