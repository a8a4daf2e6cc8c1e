"""Where runs live: ``results/runs/<time>-<label>/`` and the search folders inside them.

A training run folder holds ``checkpoint.pt`` (supernet) or ``train_checkpoint.pt`` (standalone); a search
folder (``RUN/search``, ``RUN/search-2``, ...) holds ``best.json`` once a search has written its reports.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

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
        strategy = json.loads((folder / SearchFolder.BEST).read_text()).get("strategy")
    except (OSError, json.JSONDecodeError, AttributeError):
        strategy = None
    return strategy == PREFERRED_STRATEGY, (folder / SearchFolder.BEST).stat().st_mtime


def pick_search(folders: list[Path]) -> Path | None:
    """The most recent markov search among ``folders`` if any, else the most recent search."""
    return max(folders, key=_search_info) if folders else None


def find_search_dir(run: str | None) -> Path:
    """A search folder (holding best.json) from ``run`` (search folder or training run) or the newest one."""
    if run is not None:
        p = Path(run)
        if not p.is_dir():
            raise ScalenasError(f"--run {run}: not a directory")
        if (p / SearchFolder.BEST).is_file():
            return p
        found = pick_search([q for q in p.glob("search*") if (q / SearchFolder.BEST).is_file()])
        if found is None:
            raise ScalenasError(f"--run {run}: no finished search there (no best.json in it or in {run}/search*); "
                                "run scalenas search first")
        return found
    found = pick_search([q for q in RUNS_DIR.glob("*/search*") if (q / SearchFolder.BEST).is_file()])
    if found is None:
        raise ScalenasError(f"no finished search under {RUNS_DIR}/*/search* (run scalenas search first, or give --run)")
    return found


# ------------------------------------------------------------------------------------------ the folder owners
DATA_RECORD_FORMAT = "scalenas-data-record/1"


def _read_json(path: Path, what: str) -> Any:
    """A JSON document written by scalenas; one clear line when it is unreadable."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ScalenasError(f"{path}: missing ({what})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ScalenasError(f"{path}: unreadable {what} ({type(exc).__name__})") from None


def check_data_record(rec: Any, where: str) -> dict[str, Any]:
    """A data record (what a run trained on: data, split, classes, fingerprint) validated; raises otherwise."""
    if not isinstance(rec, dict) or rec.get("format") != DATA_RECORD_FORMAT:
        raise ScalenasError(f"{where}: not a scalenas data record (format {DATA_RECORD_FORMAT!r} expected)")
    classes = rec.get("classes")
    if not isinstance(rec.get("data"), str) or not isinstance(classes, list) \
            or not all(isinstance(c, str) for c in classes) or not isinstance(rec.get("fingerprint"), str):
        raise ScalenasError(f"{where}: damaged data record (needs data, classes and fingerprint)")
    return rec


class RunFolder:
    """A training run folder: every file a run writes is named here once.

    ``data.json`` is the run's *data record* (:data:`DATA_RECORD_FORMAT`): the data it trained on (an absolute
    path, or an embedded dataset's name), the split (seed, fractions), the stored size and augmentation defaults,
    the class list and a fingerprint of the data's content; ``space.yaml`` is the space the supernet was built
    from (``num_classes`` fitted to the data). Every command that continues the run reads them.
    """

    CHECKPOINT = SUPERNET_CKPT
    STANDALONE_CHECKPOINT = STANDALONE_CKPT
    CONFIG = "config.yaml"
    SPLIT = "split.json"
    DATA = "data.json"
    SPACE = "space.yaml"
    PANEL = "panel.csv"
    SUMMARY = "run_summary.json"
    RESULT = "result.json"
    ARCH = "arch.json"
    FINAL = "final.pt"

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def checkpoint(self) -> Path:
        return self.path / self.CHECKPOINT

    def has_data_record(self) -> bool:
        return (self.path / self.DATA).is_file()

    def data_record(self) -> dict[str, Any] | None:
        """The run's data record, or None for a run written before records existed."""
        path = self.path / self.DATA
        if not path.is_file():
            return None
        return check_data_record(_read_json(path, "data record"), str(path))

    def write_data_record(self, record: dict[str, Any]) -> Path:
        from scalenas.io import atomic_write_json

        return atomic_write_json(self.path / self.DATA, check_data_record(record, str(self.path / self.DATA)))

    def write_space(self, raw: dict[str, Any]) -> Path:
        import yaml

        from scalenas.io import atomic_write_text

        return atomic_write_text(self.path / self.SPACE, yaml.safe_dump(raw, sort_keys=False))


class SearchFolder:
    """A search folder (``RUN/search``, ``RUN/search-2``, ...): every file a search, ``extrapolate`` and
    ``train --family`` write into it is named here once.

    Besides the reports it holds a copy of its run's data record (``data.json``) and the space the search ran on
    (``space.yaml``, with ``num_classes`` fitted to the data), so the folder is self-contained: its member files
    refer to ``space.yaml`` relative to themselves, and ``train --family`` / ``report`` follow ``data.json``
    even when the run folder was moved or deleted.
    """

    STATE = "state.json"
    CONFIG = "search_config.json"
    BEST = "best.json"
    CHAIN = "chain.json"
    PARETO = "pareto.csv"
    FAMILY = "family.csv"
    LOG = "search_log.csv"
    PLOT = "pareto.png"
    FAMILY_PLOT = "family.png"
    STANDALONE = "standalone.csv"
    EXTRAPOLATION = "extrapolation.json"
    DATA = RunFolder.DATA
    SPACE = RunFolder.SPACE
    MEMBER_PREFIX = "member_s"
    MEMBER_GLOB = "member_s*.json"
    REPORTS = (BEST, FAMILY, PARETO, CHAIN)  # rewritten after every generation, after the state
    SEARCH_FILES = (STATE, PARETO, FAMILY, CHAIN, BEST, LOG, PLOT, CONFIG)  # what a search writes (--force clears)

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"SearchFolder({str(self.path)!r})"

    def file(self, name: str) -> Path:
        return self.path / name

    @classmethod
    def member_name(cls, stage: int) -> str:
        return f"{cls.MEMBER_PREFIX}{int(stage)}.json"

    @classmethod
    def member_stage(cls, path: str | Path) -> int | None:
        """The stage of a member file (``member_s5.json`` -> 5); None for any other name."""
        stem = Path(path).stem
        tail = stem[len(cls.MEMBER_PREFIX):]
        return int(tail) if stem.startswith(cls.MEMBER_PREFIX) and tail.isdigit() else None

    def member_file(self, stage: int) -> Path:
        return self.path / self.member_name(stage)

    def member_files(self) -> list[Path]:
        return sorted(self.path.glob(self.MEMBER_GLOB))

    @staticmethod
    def holds_search(path: str | Path) -> bool:
        """Whether ``path`` is a search folder (it has a search config or best.json)."""
        p = Path(path)
        return (p / SearchFolder.CONFIG).is_file() or (p / SearchFolder.BEST).is_file()

    def config(self) -> dict[str, Any] | None:
        path = self.path / self.CONFIG
        if not path.is_file():
            return None
        doc = _read_json(path, "search config")
        if not isinstance(doc, dict):
            raise ScalenasError(f"{path}: not a search config (a JSON object expected)")
        return doc

    def run_dir(self) -> Path | None:
        """The training run the search belongs to (None when its config does not say)."""
        cfg = self.config() or {}
        run = cfg.get("run_dir")
        if isinstance(run, str) and run:
            return Path(run)
        ckpt = cfg.get("supernet")
        return Path(ckpt).parent if isinstance(ckpt, str) and ckpt else None

    def data_record(self) -> dict[str, Any] | None:
        """The data the search's supernet trained on: the folder's own copy, else its run's record."""
        own = RunFolder(self.path).data_record()  # the same file name and format as a run's
        if own is not None:
            return own
        run = self.run_dir()
        return RunFolder(run).data_record() if run is not None else None

    def write_data_record(self, record: dict[str, Any]) -> Path:
        return RunFolder(self.path).write_data_record(record)

    @property
    def space_file(self) -> Path:
        return self.path / self.SPACE

    def write_space(self, raw: dict[str, Any]) -> Path:
        return RunFolder(self.path).write_space(raw)

    # ---- the search state: one reader (every failure is one line) and one atomic writer
    @property
    def state_file(self) -> Path:
        return self.path / self.STATE

    def holds_state(self) -> bool:
        return self.state_file.exists()

    def read_state(self) -> dict[str, Any]:
        """The saved search state (``state.json``), for a resume: a missing, unreadable or non-object file is one
        clear line starting ``cannot resume``."""
        path = self.state_file
        if not path.is_file():
            raise ScalenasError(f"cannot resume: {path} does not exist")
        try:
            state = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ScalenasError(f"cannot resume: {path} is unreadable ({type(exc).__name__})") from None
        if not isinstance(state, dict):
            raise ScalenasError(f"cannot resume: {path} is not a search state")
        return state

    def write_state(self, state: dict[str, Any]) -> Path:
        from scalenas.io import atomic_write_json

        return atomic_write_json(self.state_file, state)

    def write_config(self, config: dict[str, Any]) -> Path:
        from scalenas.io import atomic_write_json

        return atomic_write_json(self.path / self.CONFIG, config)

    def reports_complete(self) -> bool:
        """Whether the reports were written after the last saved state (a kill between the state write and the
        report writes leaves them behind: then a resume writes them again)."""
        try:
            state = self.state_file.stat().st_mtime_ns
            return all((self.path / name).stat().st_mtime_ns >= state for name in self.REPORTS)
        except OSError:
            return False

    def state_done(self) -> bool | None:
        """Whether the saved search state says the search finished (None: no state file)."""
        if not self.state_file.is_file():
            return None
        try:
            return bool(self.read_state().get("done"))
        except ScalenasError:
            return False
