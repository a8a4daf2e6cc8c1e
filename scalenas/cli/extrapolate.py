"""``scalenas extrapolate``: grow a searched family beyond its last scaling stage (METHOD.md §5).

    scalenas extrapolate --steps 2                       # the most recent search under results/runs/
    scalenas extrapolate --steps 3 --run results/runs/RUN/search --growth 1.8

Reads ``best.json`` (base, chain, targets, tolerance) of a finished search, calls
:func:`scalenas.search.extrapolate.extrapolate` and writes into the search folder:

* ``member_s{S+k}.json``: one architecture JSON per new member (METHOD.md §8 fields plus stage, kind, flops,
  params, target_flops), usable as ``scalenas train --arch``;
* ``family.csv``: the searched rows plus rows of ``kind = extrapolated`` (top1 empty: not evaluated);
* ``extrapolation.json``: direction u, step lengths, FLOPs ratios, growth and tolerance.

Re-running replaces the previous extrapolated rows and member files (idempotent).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from scalenas.errors import ScalenasError

STRATEGY_PREFERENCE = "markov"  # among several searches of one run, the project's own search is preferred


def add_parser(sub) -> None:
    p = sub.add_parser(
        "extrapolate", help="extend the searched family beyond its last scaling stage",
        description="Take the best chain's per-step log-multiplier increments, form the stationary step direction "
        "u (weighted toward the last steps) and, for each new step, solve for the step length along u that "
        "multiplies FLOPs by the growth factor under the real rounding rules. New members lie outside the "
        "supernet: they are not evaluated (train them with scalenas train, or grow a smaller member).")
    p.add_argument("--steps", type=int, required=True, help="number of new members (>= 1)")
    p.add_argument("--run", default=None, help="search folder, or a training run holding one "
                   "(default: the most recent search under results/runs/)")
    p.add_argument("--growth", type=float, default=None,
                   help="FLOPs ratio between members (default: the search's target ratio, else the space's)")
    p.add_argument("--tolerance", type=float, default=None,
                   help="relative FLOPs tolerance reported per member (default: the search's)")
    p.set_defaults(func=run)


# ------------------------------------------------------------------------------------------ locating searches
def _search_info(folder: Path) -> tuple[float, bool]:
    """(mtime of best.json, whether the strategy is the preferred one)."""
    try:
        strategy = json.loads((folder / "best.json").read_text()).get("strategy")
    except (OSError, json.JSONDecodeError, AttributeError):
        strategy = None
    return (folder / "best.json").stat().st_mtime, strategy == STRATEGY_PREFERENCE


def _pick(folders: list[Path]) -> Path | None:
    """The most recent markov search if any, else the most recent search."""
    if not folders:
        return None
    info = {f: _search_info(f) for f in folders}
    return max(folders, key=lambda f: (info[f][1], info[f][0]))


def find_search_dir(run: str | None) -> Path:
    """A search folder (holding best.json) from ``--run`` (search folder or training run) or the newest one."""
    from scalenas.train.supernet import RUNS_DIR

    if run is not None:
        p = Path(run)
        if not p.is_dir():
            raise ScalenasError(f"--run {run}: not a directory")
        if (p / "best.json").is_file():
            return p
        found = _pick([q for q in p.glob("search*") if (q / "best.json").is_file()])
        if found is None:
            raise ScalenasError(f"--run {run}: no finished search there (no best.json in it or in {run}/search*); "
                                "run scalenas search first")
        return found
    found = _pick([q for q in RUNS_DIR.glob("*/search*") if (q / "best.json").is_file()])
    if found is None:
        raise ScalenasError(f"no finished search under {RUNS_DIR}/*/search* (run scalenas search first, or give --run)")
    return found


def read_search(folder: Path, require_done: bool = True) -> dict[str, Any]:
    """best.json (+ chain.json) of a finished search, validated; raises ScalenasError otherwise."""
    try:
        best = json.loads((folder / "best.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ScalenasError(f"{folder}/best.json: unreadable ({type(exc).__name__})") from None
    state_path = folder / "state.json"
    if require_done and state_path.is_file():
        try:
            done = bool(json.loads(state_path.read_text()).get("done"))
        except (OSError, json.JSONDecodeError):
            done = False
        if not done:
            raise ScalenasError(f"the search in {folder} is not finished; continue it with "
                                f"scalenas search --resume --out {folder}")
    if not isinstance(best, dict) or not best.get("base") or not isinstance(best.get("chain"), list) \
            or not best["chain"]:
        raise ScalenasError(f"{folder}/best.json holds no complete family (base and chain); the search found none")
    chain_path = folder / "chain.json"
    chain_doc = None
    if chain_path.is_file():
        try:
            chain_doc = json.loads(chain_path.read_text())
        except (OSError, json.JSONDecodeError):
            raise ScalenasError(f"{chain_path}: malformed JSON") from None
    chain = chain_doc["chain"] if isinstance(chain_doc, dict) and chain_doc.get("chain") else best["chain"]
    try:
        triples = [(float(x["depth"]), float(x["width"]), int(x["resolution"])) for x in chain]
    except (KeyError, TypeError, ValueError):
        raise ScalenasError(f"{folder}: chain entries need depth, width and resolution") from None
    return {"best": best, "chain": triples, "chain_doc": chain_doc}


def search_space(folder: Path, best: dict[str, Any]):
    """The space of a search: by name, else the one stored in the search's supernet checkpoint."""
    from scalenas.spaces.space import load_space

    try:
        return load_space(best["space"])
    except (ScalenasError, KeyError, TypeError):
        pass
    try:
        ckpt = json.loads((folder / "search_config.json").read_text())["supernet"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        raise ScalenasError(f"{folder}: space {best.get('space')!r} not found and no search_config.json naming "
                            "the supernet") from None
    from scalenas.train.checkpoint import checkpoint_space, read_checkpoint

    return checkpoint_space(read_checkpoint(ckpt), ckpt)


def default_growth(best: dict[str, Any], space) -> float:
    targets = best.get("targets") or []
    if len(targets) >= 2 and targets[-2] > 0:
        return round(float(targets[-1]) / float(targets[-2]), 4)
    return float(space.growth)


# ------------------------------------------------------------------------------------------ the command
def extrapolate_search(folder: Path, steps: int, growth: float | None = None,
                       tolerance: float | None = None) -> dict[str, Any]:
    """Extrapolate the family of the search in ``folder`` and write the files; returns extrapolation.json."""
    import pandas as pd

    from scalenas.search.extrapolate import extrapolate
    from scalenas.spaces.flops import FLOPS_CONVENTION
    from scalenas.io import atomic_write_csv, atomic_write_json
    from scalenas.report.search_report import FAMILY_COLUMNS

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ScalenasError(f"--steps must be an integer >= 1, got {steps!r}")
    if growth is not None and (not math.isfinite(growth) or not growth > 1.0):
        raise ScalenasError(f"--growth must be a number > 1, got {growth!r}")
    found = read_search(folder)
    best, chain = found["best"], found["chain"]
    space = search_space(folder, best)
    growth = default_growth(best, space) if growth is None else float(growth)
    if not growth > 1.0:
        raise ScalenasError(f"growth must be > 1; the search's targets give {growth} (pass --growth)")
    tol = float(best.get("tolerance") or 0.1) if tolerance is None else float(tolerance)
    base = best["base"]
    members = extrapolate(space, base, chain, steps, growth=growth, tolerance=tol)

    # member files: write the new ones, then drop stale ones from an earlier, longer extrapolation
    written = []
    for m in members:
        arch = json.loads(m["arch"])
        arch.update({"stage": m["stage"], "kind": "extrapolated", "flops": m["flops"], "params": m["params"],
                     "target_flops": m["target_flops"]})
        path = folder / f"member_s{m['stage']}.json"
        atomic_write_json(path, arch)
        written.append(path.name)
        m["file"] = path.name
    for old in folder.glob("member_s*.json"):
        if old.name not in written:
            old.unlink()

    fam_path = folder / "family.csv"
    if fam_path.is_file():
        fam = pd.read_csv(fam_path)
        if "kind" not in fam.columns:
            fam["kind"] = "searched"
        fam = fam[fam["kind"].fillna("searched") != "extrapolated"]
    else:
        from scalenas.report.search_report import family_frame

        fam = family_frame(best)
    new_rows = pd.DataFrame([{k: m.get(k) for k in FAMILY_COLUMNS} for m in members], columns=FAMILY_COLUMNS)
    new_rows["top1"] = float("nan")
    cols = list(dict.fromkeys(list(FAMILY_COLUMNS) + list(fam.columns)))
    frames = [f.reindex(columns=cols) for f in (fam, new_rows) if not f.empty]
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)
    atomic_write_csv(fam_path, out)

    last_flops = None
    family = best.get("family") or []
    if family:
        last_flops = family[-1].get("flops")
    doc = {
        "space": space.name, "strategy": best.get("strategy"), "search": str(folder),
        "base": base, "chain": [{"depth": d, "width": w, "resolution": r} for d, w, r in chain],
        "growth": growth, "tolerance": tol, "steps": steps,
        "direction": members[0]["direction"] if members else None,
        "direction_note": "unit vector in (log depth, log width, log resolution), weighted toward the last steps",
        "start": {"stage": len(chain), "flops": last_flops},
        "members": [{k: m[k] for k in ("stage", "step", "target_flops", "flops", "params", "resolution",
                                       "depth_mult", "width_mult", "flops_ratio", "step_length",
                                       "within_tolerance", "arch", "file")} for m in members],
        "step_lengths": [m["step_length"] for m in members],
        "flops_ratios": [m["flops_ratio"] for m in members],
        "flops_convention": FLOPS_CONVENTION,
        "evaluated": False,
        "note": "extrapolated members lie outside the supernet: train them standalone (scalenas train --arch "
                "FILE) or grow a trained smaller member (scalenas grow)",
    }
    atomic_write_json(folder / "extrapolation.json", doc)
    return doc


def run(args: argparse.Namespace) -> int:
    from scalenas.spaces.targets import format_flops

    if args.steps < 1:
        raise ScalenasError(f"--steps must be >= 1, got {args.steps}")
    if args.growth is not None and not args.growth > 1.0:
        raise ScalenasError(f"--growth must be > 1, got {args.growth}")
    folder = find_search_dir(args.run)
    doc = extrapolate_search(folder, args.steps, args.growth, args.tolerance)
    u = doc["direction"]
    print(f"extrapolated {doc['steps']} member(s) of {folder} (space {doc['space']}, growth {doc['growth']:g}, "
          f"tolerance {doc['tolerance']:g}); direction u = (log d {u['depth']:.3f}, log w {u['width']:.3f}, "
          f"log r {u['resolution']:.3f})")
    print(f"  {'stage':>5} {'target':>9} {'FLOPs':>9} {'ratio':>6} {'params':>9} {'res':>4} {'depth':>7} {'width':>7}"
          f" {'t':>7}  within  file")
    for m in doc["members"]:
        print(f"  {m['stage']:>5} {format_flops(m['target_flops']):>9} {format_flops(m['flops']):>9} "
              f"{m['flops_ratio']:>6.3f} {format_flops(m['params']):>9} {m['resolution']:>4} {m['depth_mult']:>7.4f} "
              f"{m['width_mult']:>7.4f} {m['step_length']:>7.4f}  {'yes' if m['within_tolerance'] else 'NO':<6}  "
              f"{m['file']}")
    print(f"wrote {folder}/member_s*.json, family.csv (kind=extrapolated rows), extrapolation.json; "
          "members are not evaluated: train them with scalenas train --arch FILE")
    return 0
