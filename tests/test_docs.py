"""The documentation stays true: every Python example of docs/python-api.md runs, links resolve, and the docs
and the package are written in the project's own words (no pointers to internal reference files)."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
API_DOC = DOCS / "python-api.md"
FORBIDDEN = ("../shared", "METHOD.md")
# scalenas/jobs and scalenas/search_spaces are links to the top-level folders, not package source.
PACKAGE_SKIP = {ROOT / "scalenas" / "jobs", ROOT / "scalenas" / "search_spaces"}

_FENCE = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def python_blocks(text: str) -> list[tuple[str, str, int]]:
    """(heading above it, code, line number) of every ```python block, in order."""
    blocks = []
    for m in _FENCE.finditer(text):
        if m.group(1).lower() not in ("python", "py"):
            continue
        headings = _HEADING.findall(_FENCE.sub("", text[:m.start()]))
        heading = headings[-1] if headings else "top"
        blocks.append((heading, m.group(2), text.count("\n", 0, m.start()) + 1))
    return blocks


def _block_id(index: int, heading: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-")
    return f"{index}-{slug}"


BLOCKS = python_blocks(API_DOC.read_text()) if API_DOC.is_file() else []
# All blocks together take ~30 s on a shared 2-core machine; the ones that train a supernet take most of it
# (~6 s and ~15 s), so they are the slow tier and the rest (~7 s) stays in the fast one.
_SLOW_MARKERS = ("train_supernet(",)


def _example_params() -> list:
    params = []
    for i, (heading, code, _) in enumerate(BLOCKS):
        slow = any(m in code for m in _SLOW_MARKERS)
        params.append(pytest.param(i, id=_block_id(i, heading), marks=[pytest.mark.slow] if slow else []))
    return params


def test_api_doc_has_examples():
    assert len(BLOCKS) >= 8, f"{API_DOC} should hold the runnable API examples"


@pytest.mark.parametrize("index", _example_params())
def test_python_api_example_runs(index, tmp_path, monkeypatch, torch_threads):
    """Each block runs on its own (fresh namespace, its own imports), in a temporary working directory."""
    heading, code, line = BLOCKS[index]
    import tempfile

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # tempfile.mkdtemp() in the examples lands here
    namespace = {"__name__": f"docs_example_{index}"}
    # Leading newlines make a traceback's line numbers those of the markdown file.
    compiled = compile("\n" * line + code, f"{API_DOC} (block {index}: {heading})", "exec")
    exec(compiled, namespace)  # noqa: S102 - running our own documentation is the point


def _text_files(root: Path):
    for dirpath, dirnames, filenames in os.walk(root):  # does not follow symlinked folders
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if d != "__pycache__" and here / d not in PACKAGE_SKIP]
        for name in filenames:
            path = here / name
            if path.is_symlink() or path.suffix in (".pyc", ".pyo", ".so", ".pt", ".png"):
                continue
            try:
                yield path, path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue


def test_no_pointers_to_internal_references():
    files = [(ROOT / "README.md", (ROOT / "README.md").read_text())]
    files += list(_text_files(DOCS)) + list(_text_files(ROOT / "scalenas"))
    hits = []
    for path, text in files:
        for lineno, line in enumerate(text.splitlines(), 1):
            for needle in FORBIDDEN:
                if needle in line:
                    hits.append(f"{path.relative_to(ROOT)}:{lineno}: {needle!r}")
    assert not hits, "write these in the project's own words:\n" + "\n".join(hits)


def _links(text: str) -> list[str]:
    prose = _INLINE_CODE.sub("", _FENCE.sub("", text))
    return _LINK.findall(prose)


def test_relative_links_resolve():
    docs = [ROOT / "README.md"] + sorted(DOCS.glob("*.md"))
    broken = []
    for doc in docs:
        for target in _links(doc.read_text()):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith("#"):
                continue  # a URL (http:, mailto:) or an anchor in the same page
            path = target.split("#", 1)[0]
            if not (path.startswith("docs/") or path.endswith(".md") or "/" in path or "." in path):
                continue
            if not (doc.parent / path).exists():
                broken.append(f"{doc.relative_to(ROOT)}: ]({target})")
    assert not broken, "links to missing files:\n" + "\n".join(broken)


def test_anchors_of_doc_links_exist():
    """``](reports.md#some-heading)`` inside docs/ names a heading that exists (GitHub's slug rule)."""

    def slugs(text: str) -> set[str]:
        out = set()
        for h in _HEADING.findall(_FENCE.sub("", text)):
            slug = re.sub(r"[^\w\- ]", "", h.strip().lower().replace("`", "")).replace(" ", "-")
            out.add(slug)
        return out

    broken = []
    for doc in sorted(DOCS.glob("*.md")):
        for target in _links(doc.read_text()):
            if "#" not in target or re.match(r"^[a-z]+:", target):
                continue
            path, anchor = target.split("#", 1)
            page = doc if not path else doc.parent / path
            if page.suffix == ".md" and page.is_file() and anchor not in slugs(page.read_text()):
                broken.append(f"{doc.relative_to(ROOT)}: ]({target})")
    assert not broken, "links to missing headings:\n" + "\n".join(broken)


def test_every_job_key_is_documented():
    """The job-key table of docs/method.md lists every TrainConfig field (config errors point there)."""
    from scalenas.options import flat_fields
    from scalenas.train.config import TrainConfig

    text = (DOCS / "method.md").read_text()
    missing = [f.name for f in flat_fields(TrainConfig) if f"| `{f.name}` |" not in text]
    assert not missing, f"docs/method.md: job keys missing from the table: {', '.join(missing)}"
