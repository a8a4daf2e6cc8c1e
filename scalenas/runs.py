"""Where runs live: ``results/runs/<time>-<label>/`` and the search folders inside them.

A training run folder holds ``checkpoint.pt`` (supernet) or ``train_checkpoint.pt`` (standalone); a search
folder (``RUN/search``, ``RUN/search-2``, ...) holds ``best.json`` once a search has written its reports.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from scalenas.errors import ScalenasError

RUNS_DIR = Path("results") / "runs"
SUPERNET_CKPT = "checkpoint.pt"        # a supernet run
STANDALONE_CKPT = "train_checkpoint.pt"  # a standalone run (never mistaken for a supernet run)
PREFERRED_STRATEGY = "markov"  # among several searches of one run, the project's own search is preferred


def new_run_dir(label: str) -> Path:
    """A new, not yet existing folder ``results/runs/<time>-<label>`` (suffixed -1, -2, ... on a clash)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = RUNS_DIR / f"{stamp}-{label}"
    path, k = base, 1
    while path.exists():
        path = Path(f"{base}-{k}")
        k += 1
    return path


def latest_run(kind_file: str = SUPERNET_CKPT, missing: str | None = None) -> Path:
    """The most recently modified run folder holding ``kind_file``; ``missing`` is the error when there is none."""
    runs = sorted((p for p in RUNS_DIR.glob("*") if (p / kind_file).is_file()), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise ScalenasError(missing or f"no run found under {RUNS_DIR}/ holding {kind_file} "
                            "(train one with scalenas train-supernet)")
    return runs[-1]


def _search_info(folder: Path) -> tuple[bool, float]:
    """(whether the strategy is the preferred one, mtime of best.json)."""
    try:
        strategy = json.loads((folder / "best.json").read_text()).get("strategy")
    except (OSError, json.JSONDecodeError, AttributeError):
        strategy = None
    return strategy == PREFERRED_STRATEGY, (folder / "best.json").stat().st_mtime


def pick_search(folders: list[Path]) -> Path | None:
    """The most recent markov search among ``folders`` if any, else the most recent search."""
    return max(folders, key=_search_info) if folders else None


def find_search_dir(run: str | None) -> Path:
    """A search folder (holding best.json) from ``run`` (search folder or training run) or the newest one."""
    if run is not None:
        p = Path(run)
        if not p.is_dir():
            raise ScalenasError(f"--run {run}: not a directory")
        if (p / "best.json").is_file():
            return p
        found = pick_search([q for q in p.glob("search*") if (q / "best.json").is_file()])
        if found is None:
            raise ScalenasError(f"--run {run}: no finished search there (no best.json in it or in {run}/search*); "
                                "run scalenas search first")
        return found
    found = pick_search([q for q in RUNS_DIR.glob("*/search*") if (q / "best.json").is_file()])
    if found is None:
        raise ScalenasError(f"no finished search under {RUNS_DIR}/*/search* (run scalenas search first, or give --run)")
    return found
