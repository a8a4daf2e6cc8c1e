"""What the job scripts share: the checkout on ``sys.path``, their parser, and CSV rows written atomically.

Every script in ``jobs/`` and ``jobs/bench/`` starts with the same two lines (``parents[1]`` from ``jobs/bench``)::

    sys.path.insert(0, str(Path(__file__).resolve().parent))  # jobs/: jobkit
    import jobkit  # noqa: E402  (puts the checkout and jobs/ on sys.path)

so it runs from any directory, installed or not (the GPU machine has the working tree only), and imports the
package, ``jobs/*.py`` and its neighbours in ``jobs/bench``. What a script measures stays in the script; what it
computes belongs to the library (``scalenas.train.standalone.train_or_reuse`` is the members' cache).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

REPO = Path(__file__).resolve().parents[1]
JOBS = REPO / "jobs"
for _p in (JOBS, REPO):  # REPO first on the path: the checkout's package before any installed copy
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))


def parser(doc: str | None, prog: str | None = None) -> argparse.ArgumentParser:
    """A script's parser: its module docstring as the help text, kept as written (commands and targets)."""
    return argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def write_rows(path: str | Path, rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    """``rows`` as a CSV with exactly ``columns`` (a missing value is empty), written atomically (a run cut short
    keeps the previous complete file)."""
    import pandas as pd

    from scalenas.io import atomic_write_csv

    frame = pd.DataFrame([{k: r.get(k, "") for k in columns} for r in rows], columns=list(columns))
    return atomic_write_csv(path, frame)


def append_row(path: str | Path, row: Mapping[str, Any]) -> Path:
    """The CSV at ``path`` (if any) plus one row, written atomically; a new column is added at the end."""
    import pandas as pd

    from scalenas.io import atomic_write_csv

    path = Path(path)
    frame = pd.read_csv(path) if path.is_file() else pd.DataFrame()
    return atomic_write_csv(path, pd.concat([frame, pd.DataFrame([dict(row)])], ignore_index=True))
