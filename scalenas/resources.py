"""Files shipped inside the package: the search spaces and the default jobs.

The repository keeps them in its top-level ``search_spaces/`` and ``jobs/`` folders; ``scalenas/search_spaces``
and ``scalenas/jobs`` point there, and the wheel carries their YAML files as package data. Everything is read
through :mod:`importlib.resources`, so an installed wheel works from any directory.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

SPACES = "search_spaces"
JOBS = "jobs"


def shipped_dir(kind: str) -> Path:
    """The folder of shipped ``kind`` files (``search_spaces`` or ``jobs``) as a real path."""
    root = resources.files("scalenas") / kind
    return Path(str(root))


def shipped_names(kind: str, suffix: str = ".yaml") -> list[str]:
    """Names (without suffix) of the shipped files of ``kind``."""
    folder = shipped_dir(kind)
    return sorted(p.stem for p in folder.glob(f"*{suffix}")) if folder.is_dir() else []


def shipped_file(kind: str, name: str, suffix: str = ".yaml") -> Path | None:
    """The shipped file ``name`` of ``kind``, or None when the package ships no such file."""
    path = shipped_dir(kind) / f"{name}{suffix}"
    return path if path.is_file() else None
