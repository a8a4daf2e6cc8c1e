"""Train a whole searched family standalone: every member from scratch, or each one grown from the previous.

``scalenas train --family SEARCH_DIR [--grow]`` trains the members listed in the search folder's
``family.csv`` (searched and extrapolated rows, by stage): s0 from scratch and, with ``grow``, each next member
initialised from the trained previous one by :func:`scalenas.models.grow_member.grow_to` (function
preserving), else from scratch. Each member is a normal ``scalenas train`` run in ``SEARCH_DIR/family-<mode>/
s<k>``; a finished member is skipped and an interrupted one resumed, so the whole family is resumable member
by member. After every member the rows of ``SEARCH_DIR/standalone.csv`` (what ``scalenas report`` reads) are
rewritten: stage, kind, arch, holdout_top1, test_top1, run_dir, init, steps, train_seconds, block_steps.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from scalenas.errors import ScalenasError
from scalenas.io import atomic_write_csv
from scalenas.models.grow_member import grow_to
from scalenas.models.registry import load_model, save_model
from scalenas.runs import STANDALONE_CKPT, RunFolder, SearchFolder
from scalenas.spaces.arch import derive_subnet, parse_subnet
from scalenas.spaces.space import SearchSpace, load_space, resolve_space_ref
from scalenas.train.config import TrainConfig, followed_record
from scalenas.train.standalone import RESULT_NAME, train_or_reuse

STANDALONE_COLUMNS = ["stage", "kind", "arch", "holdout_top1", "test_top1", "run_dir", "init", "steps",
                      "train_seconds", "block_steps", "data_fingerprint"]


def family_members(search_dir: str | Path) -> list[dict[str, Any]]:
    """The members of the search in ``search_dir`` by stage: ``{stage, kind, arch}`` (arch as canonical JSON)."""
    folder = Path(search_dir)
    fam_path = folder / SearchFolder.FAMILY
    if not folder.is_dir():
        raise ScalenasError(f"--family {folder}: not a directory")
    if not fam_path.is_file():
        raise ScalenasError(f"--family {folder}: no family.csv (run scalenas search, and scalenas extrapolate for "
                            "the larger members, first)")
    try:
        frame = pd.read_csv(fam_path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ScalenasError(f"{fam_path}: not a readable family table ({type(exc).__name__})") from None
    if frame.empty or not {"stage", "arch"} <= set(frame.columns):
        raise ScalenasError(f"{fam_path}: holds no family (needs rows with stage and arch)")
    kinds = frame["kind"].fillna("searched") if "kind" in frame.columns else ["searched"] * len(frame)
    members = []
    for (_, row), kind in zip(frame.iterrows(), kinds):
        try:
            obj = json.loads(row["arch"])
            stage = int(row["stage"])
        except (TypeError, ValueError, json.JSONDecodeError):
            raise ScalenasError(f"{fam_path}: row of stage {row.get('stage')!r} has no valid arch") from None
        members.append({"stage": stage, "kind": str(kind), "arch": obj})
    members.sort(key=lambda m: m["stage"])
    stages = [m["stage"] for m in members]
    if len(set(stages)) != len(stages):
        raise ScalenasError(f"{fam_path}: more than one row per stage")
    return members


def member_space(folder: Path, arch: dict[str, Any]) -> SearchSpace:
    """The space of a member of the search in ``folder``: what its row names, else the folder's space.yaml."""
    return resolve_space_ref(arch, folder, f"{folder / SearchFolder.FAMILY} (stage {arch.get('stage', '?')})")


def _block_steps(model_arch: dict[str, Any], steps: int, space: SearchSpace | None = None) -> int:
    """Training compute in block-steps: IR blocks of the member x optimiser steps (the growth evidence's unit)."""
    space = space if space is not None else load_space(model_arch["space"])
    return len(derive_subnet(space, parse_subnet(model_arch, space, allow_outside=True)).layers) * int(steps)


def train_family(search_dir: str | Path, cfg: TrainConfig, *, grow: bool = False, depth_init: str = "copy",
                 stages: list[int] | None = None, progress: bool = True, out_dir: str | Path | None = None,
                 record: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Train every member (or ``stages``) of the search's family; returns the standalone.csv rows.

    ``cfg`` should follow the search's data (:func:`scalenas.train.config.follow_overrides`); ``record`` (default:
    the search folder's data record) is checked against the data each member loads: another class list, channel
    count or content is refused before training, so standalone.csv holds results of the search's data only.

    ``grow``: member k+1 starts from member k's trained weights (:func:`grow_to`); the first member trained
    always starts from scratch. Resumable: a member with ``result.json`` is reused, one with a checkpoint resumed.
    """
    folder = Path(search_dir)
    members = family_members(folder)
    if stages is not None:
        members = [m for m in members if m["stage"] in set(stages)]
        if not members:
            raise ScalenasError(f"--family {folder}: none of stages {stages} is in the family")
    if record is None:
        record = followed_record(folder)[0]
    follow = {"record": record, "where": f"the search {folder}", "strict": True}
    root = Path(out_dir) if out_dir is not None else folder / f"family-{'grown' if grow else 'scratch'}"
    rows: list[dict[str, Any]] = []
    previous: Path | None = None  # final.pt of the previous member
    for m in members:
        space = member_space(folder, m["arch"])
        run = root / f"s{m['stage']}"
        arch_arg: str | None = json.dumps(m["arch"])
        init: str | None = "scratch"
        fresh = not (run / RESULT_NAME).is_file() and not (run / STANDALONE_CKPT).is_file()
        if grow and previous is not None and fresh:
            grown_file = root / f"s{m['stage']}-grown-init.pt"
            grown = grow_to(load_model(previous), m["arch"], depth_init=depth_init, seed=cfg.seed)
            save_model(grown_file, grown, extra={"source": f"grown from {previous}"})
            arch_arg, init = str(grown_file), None
        result, _ = train_or_reuse(cfg, arch_arg, init, run, progress=progress, space=space, follow=follow)
        previous = run / RunFolder.FINAL
        rows.append({"stage": m["stage"], "kind": m["kind"], "arch": json.dumps(m["arch"]),
                     "holdout_top1": result.get("holdout_top1"), "test_top1": result.get("test_top1"),
                     "run_dir": str(run), "init": result.get("init"), "steps": result.get("steps"),
                     "train_seconds": result.get("train_seconds"),
                     "block_steps": _block_steps(m["arch"], result.get("steps") or 0, space),
                     "data_fingerprint": result.get("data_fingerprint")})
        _write_standalone(folder, rows)
    return rows


def _write_standalone(folder: Path, rows: list[dict[str, Any]]) -> None:
    """Merge ``rows`` into SEARCH_DIR/standalone.csv (rows of the same run folder are replaced)."""
    path = folder / SearchFolder.STANDALONE
    new = pd.DataFrame(rows, columns=STANDALONE_COLUMNS)
    if path.is_file():
        try:
            old = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError):
            old = pd.DataFrame(columns=STANDALONE_COLUMNS)
        if "run_dir" in old.columns:
            old = old[~old["run_dir"].isin(new["run_dir"])]
        new = pd.concat([old, new], ignore_index=True) if not old.empty else new
    atomic_write_csv(path, new)


def total_compute(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Sum of block-steps and wall seconds over the trained members."""
    return {"block_steps": float(sum(r["block_steps"] for r in rows)),
            "train_seconds": float(sum(r["train_seconds"] or 0.0 for r in rows if not (
                isinstance(r["train_seconds"], float) and math.isnan(r["train_seconds"]))))}
