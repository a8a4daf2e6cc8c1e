"""The family of a search as a table and plots, and its extrapolated members written into the search folder.

Library side of ``scalenas report`` and ``scalenas extrapolate`` (the CLI modules only parse and print):

* :func:`read_search` / :func:`search_space`: a finished search's ``best.json`` (+ ``chain.json``) and space;
* :func:`extrapolate_search`: ``member_s{S+k}.json`` files, ``kind = extrapolated`` rows in ``family.csv`` and
  ``extrapolation.json`` (re-running replaces the previous extrapolated rows and member files);
* :func:`family_table` / :func:`render` / :func:`report`: searched + extrapolated members with supernet top-1
  and standalone top-1 where trained (``standalone.csv`` in the search folder, or ``result.json`` files of
  ``scalenas train`` runs whose architecture is the member's); ``pareto.png`` and ``family.png``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from scalenas.errors import ScalenasError
from scalenas.io import atomic_write_bytes, atomic_write_csv, atomic_write_json, remove_file
from scalenas.report.search_report import FAMILY_COLUMNS, LATENCY_COLUMNS, family_frame, finish_plot, plot_pareto, \
    with_latency
from scalenas.runs import RUNS_DIR, SearchFolder, find_search_dir
from scalenas.search.extrapolate import MAX_GROWTH, MAX_STEPS, extrapolate
from scalenas.spaces.arch import parse_subnet
from scalenas.spaces.flops import FLOPS_CONVENTION
from scalenas.spaces.space import load_space, space_reference
from scalenas.spaces.targets import format_flops
from scalenas.train.checkpoint import checkpoint_space, read_checkpoint
from scalenas.train.standalone import find_results

FORMATS = ("table", "csv", "markdown", "json")
COLUMNS = ["stage", "kind", "flops", "params", "resolution", "depth_mult", "width_mult", "supernet_top1",
           "standalone_top1", "standalone_test_top1", "standalone_runs", "arch"]


FAMILY_NEEDS = ("stage", "flops", "params", "resolution", "depth_mult", "width_mult")


def read_table(path: Path, needs: tuple[str, ...] = (), what: str = "table") -> pd.DataFrame:
    """A CSV file of a search folder, or one line saying what is wrong with it (empty, malformed, columns)."""
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise ScalenasError(f"{path}: empty file (no header, no rows)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise ScalenasError(f"{path}: malformed {what} ({first})") from None
    except OSError as exc:
        raise ScalenasError(f"{path}: unreadable ({exc.strerror or type(exc).__name__})") from None
    missing = [c for c in needs if c not in frame.columns]
    if missing:
        raise ScalenasError(f"{path}: malformed {what}: column(s) {', '.join(missing)} missing")
    for col in needs:  # the columns a table needs are numbers
        try:
            frame[col] = pd.to_numeric(frame[col])
        except (ValueError, TypeError):
            raise ScalenasError(f"{path}: malformed {what}: column {col!r} holds something other than "
                                "numbers") from None
    return frame


def read_family_csv(path: Path) -> pd.DataFrame:
    """``family.csv`` of a search folder: one row per member, with at least :data:`FAMILY_NEEDS`."""
    fam = read_table(path, FAMILY_NEEDS, "family table")
    if fam.empty:
        raise ScalenasError(f"{path}: no members (only a header); re-run the search's reports "
                            "(scalenas search --resume) or remove the file")
    holes = fam[list(FAMILY_NEEDS)].isna().any(axis=1)
    if holes.any():
        raise ScalenasError(f"{path}: malformed family table: row {int(holes.to_numpy().argmax()) + 1} needs numbers "
                            f"in {', '.join(FAMILY_NEEDS)}")
    return fam


# ------------------------------------------------------------------------------------------ a finished search
def read_search(folder: Path, require_done: bool = True) -> dict[str, Any]:
    """best.json (+ chain.json) of a finished search, validated; raises ScalenasError otherwise."""
    try:
        best = json.loads((folder / SearchFolder.BEST).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ScalenasError(f"{folder}/best.json: unreadable ({type(exc).__name__})") from None
    if require_done and SearchFolder(folder).state_done() is False:
        raise ScalenasError(f"the search in {folder} is not finished; continue it with "
                            f"scalenas search --resume --out {folder}")
    if not isinstance(best, dict) or not best.get("base") or not isinstance(best.get("chain"), list) \
            or not best["chain"]:
        raise ScalenasError(f"{folder}/best.json holds no complete family (base and chain); the search found none")
    chain_path = folder / SearchFolder.CHAIN
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
    """The space of a search: the folder's ``space.yaml``, else the one stored in the search's supernet checkpoint,
    else the space by name.

    The checkpoint's space is what the search ran on (its YAML may since have moved, changed or gone, or a
    shipped space of the same name may hold other content, e.g. ``num_classes``); the name is the fallback for
    a search whose checkpoint is no longer there.
    """
    own = SearchFolder(folder).space_file
    if own.is_file():  # the search folder's own copy (written by the search: self-contained)
        return load_space(str(own))
    ckpt = None
    try:
        ckpt = json.loads((folder / SearchFolder.CONFIG).read_text())["supernet"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        pass
    if isinstance(ckpt, str) and ckpt:
        try:
            return checkpoint_space(read_checkpoint(ckpt), ckpt)
        except ScalenasError:
            pass
    try:
        return load_space(best["space"])
    except (ScalenasError, KeyError, TypeError):
        pass
    if isinstance(ckpt, str) and ckpt:
        raise ScalenasError(f"{folder}: space {best.get('space')!r} not found and its supernet checkpoint {ckpt} "
                            "is unreadable") from None
    raise ScalenasError(f"{folder}: space {best.get('space')!r} not found and no search_config.json naming "
                        "the supernet") from None


def default_growth(best: dict[str, Any], space) -> float:
    targets = best.get("targets") or best.get("latency_targets") or []
    if len(targets) >= 2 and targets[-2] > 0:
        return round(float(targets[-1]) / float(targets[-2]), 4)
    return float(space.growth)


# ------------------------------------------------------------------------------------------ the command
def search_latency_table(folder: Path, space, lazy: bool = False):
    """The latency table a search was run with (search_config.json's ``latency``), opened; None without one."""
    from scalenas.latency.table import LatencyTable

    cfg = (SearchFolder(folder).config() or {}).get("latency")
    if not cfg:
        return None
    return LatencyTable.open(cfg["table"], space, lazy=lazy or bool(cfg.get("lazy")),
                             allow_other_device=bool(cfg.get("allow_other_device")))


def extrapolate_search(folder: Path, steps: int, growth: float | None = None,
                       tolerance: float | None = None, replace: bool = False,
                       lazy_latency: bool = False) -> dict[str, Any]:
    """Extrapolate the family of the search in ``folder`` and write the files; returns extrapolation.json.

    Fewer ``steps`` than the folder already holds is refused (larger member files would go) unless ``replace``.
    A search run with a latency table continues by predicted latency (``lazy_latency``: layers the table lacks
    are timed now).
    """

    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise ScalenasError(f"--steps must be an integer from 1 to {MAX_STEPS}, got {steps!r}")
    if growth is not None and (not math.isfinite(growth) or not 1.0 < growth <= MAX_GROWTH):
        raise ScalenasError(f"--growth must be a number > 1 and <= {MAX_GROWTH:g}, got {growth!r}")
    if tolerance is not None and (isinstance(tolerance, bool) or not isinstance(tolerance, (int, float))
                                  or not 0.0 < tolerance < 1.0):
        raise ScalenasError(f"--tolerance must be a number in (0, 1), got {tolerance!r}")
    found = read_search(folder)
    best, chain = found["best"], found["chain"]
    space = search_space(folder, best)
    growth = default_growth(best, space) if growth is None else float(growth)
    if not growth > 1.0:
        raise ScalenasError(f"growth must be > 1; the search's targets give {growth} (pass --growth)")
    tol = float(best.get("tolerance") or 0.1) if tolerance is None else float(tolerance)
    base = best["base"]
    table = search_latency_table(folder, space, lazy_latency)
    members = extrapolate(space, base, chain, steps, growth=growth, tolerance=tol,
                          latency=None if table is None else table.predict)

    sf = SearchFolder(folder)
    larger = sorted(s for s in map(sf.member_stage, sf.member_files()) if s is not None)
    last_new = max((int(m["stage"]) for m in members), default=len(chain))
    if larger and larger[-1] > last_new and not replace:
        raise ScalenasError(f"{folder} already holds extrapolated members up to s{larger[-1]}; --steps {steps} would "
                            f"stop at s{last_new}: give --steps {steps + larger[-1] - last_new} (or more) to keep "
                            "them, or --replace to drop the larger ones")
    fam_path = folder / SearchFolder.FAMILY  # read (and checked) before anything is written
    if fam_path.is_file():
        fam = read_family_csv(fam_path)
        if "kind" not in fam.columns:
            fam["kind"] = "searched"
        fam = fam[fam["kind"].fillna("searched") != "extrapolated"]
    else:
        fam = family_frame(best)

    # member files: write the new ones, then drop stale ones from an earlier, longer extrapolation
    written = []
    for m in members:
        arch = json.loads(m["arch"])
        # the member rebuilds anywhere: its space is the folder's space.yaml (or embedded when there is none)
        arch.update(space_reference(space, folder, file=sf.space_file if sf.space_file.is_file() else None,
                                    embed=True))
        arch.update({"stage": m["stage"], "kind": "extrapolated", "flops": m["flops"], "params": m["params"],
                     "target_flops": m["target_flops"], **{k: m[k] for k in LATENCY_COLUMNS if k in m}})
        path = sf.member_file(m["stage"])
        atomic_write_json(path, arch)
        written.append(path.name)
        m["file"] = path.name
    for old in sf.member_files():
        if old.name not in written:
            remove_file(old)

    columns = with_latency(FAMILY_COLUMNS, table is not None)
    new_rows = pd.DataFrame([{k: m.get(k) for k in columns} for m in members], columns=columns)
    new_rows["top1"] = float("nan")
    cols = list(dict.fromkeys(columns + list(fam.columns)))
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
                                       "within_tolerance", "arch", "file")}
                    | {k: m[k] for k in LATENCY_COLUMNS if k in m} for m in members],
        "step_lengths": [m["step_length"] for m in members],
        "flops_ratios": [m["flops_ratio"] for m in members],
        "flops_convention": FLOPS_CONVENTION,
        "evaluated": False,
        "note": "extrapolated members lie outside the supernet: train them standalone (scalenas train --arch "
                "FILE) or grow a trained smaller member (scalenas grow)",
    }
    atomic_write_json(folder / SearchFolder.EXTRAPOLATION, doc)
    return doc



# ------------------------------------------------------------------------------------------ the family table
def _canonical(arch: Any, space) -> str | None:
    """Canonical subnet JSON (or None when it does not parse in ``space``)."""
    try:
        obj = json.loads(arch) if isinstance(arch, str) else arch
        return parse_subnet(obj, space, allow_outside=True).to_json()
    except (ScalenasError, json.JSONDecodeError, TypeError, ValueError):
        return None


def _fingerprint(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def search_data(folder: Path) -> dict[str, Any] | None:
    """The data record the search's supernet trained on (None for a search written before records existed)."""
    return SearchFolder(folder).data_record()


def standalone_results(folder: Path, space) -> dict[str, dict[str, Any]]:
    """canonical arch JSON -> {holdout_top1, test_top1, runs}: standalone.csv rows and result.json files.

    One table never mixes datasets: when the search records its data (``data.json``), ``standalone.csv`` rows
    trained on other data are refused (one line) and ``result.json`` files of other data are left out.
    """
    rows: list[dict[str, Any]] = []
    seen_dirs: set[Path] = set()
    record = search_data(folder)
    want = record["fingerprint"] if record is not None else None
    sa = folder / SearchFolder.STANDALONE
    if sa.is_file():
        frame = read_table(sa, (), "table of standalone results")
        if "data_fingerprint" in frame.columns:
            prints = sorted({f for f in map(_fingerprint, frame["data_fingerprint"]) if f})
            if len(prints) > 1:
                raise ScalenasError(f"{sa}: holds standalone results of {len(prints)} different datasets "
                                    f"({', '.join(prints)}); one report shows one dataset: move the rows of the "
                                    "other data to another folder")
            if want is not None and prints and prints[0] != want:
                raise ScalenasError(f"{sa}: standalone results of other data (fingerprint {prints[0]}) than the "
                                    f"search's supernet ({record['data']}, fingerprint {want}); train the family "
                                    "on the search's data (scalenas train --family follows it by default)")
        if "arch" in frame.columns and "holdout_top1" in frame.columns:
            for r in frame.to_dict("records"):
                rows.append({"arch": r["arch"], "holdout_top1": r.get("holdout_top1"),
                             "test_top1": r.get("test_top1")})
                if isinstance(r.get("run_dir"), str):  # the same model's result.json is not counted twice
                    seen_dirs.add(Path(r["run_dir"]).resolve())
    for root in (RUNS_DIR, folder, folder.parent):
        if not root.is_dir():
            continue
        for res in find_results(root):
            d = Path(res["run_dir"]).resolve()
            if d in seen_dirs or not res.get("arch_json"):
                continue
            if want is not None and _fingerprint(res.get("data_fingerprint")) != want:
                continue  # trained on other (or unrecorded) data: not this search's table
            seen_dirs.add(d)
            rows.append({"arch": res["arch_json"], "holdout_top1": res.get("holdout_top1"),
                         "test_top1": res.get("test_top1")})
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        key = _canonical(r["arch"], space)
        if key is None:
            continue
        acc = out.setdefault(key, {"holdout": [], "test": []})
        for name, col in (("holdout", "holdout_top1"), ("test", "test_top1")):
            v = r.get(col)
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                acc[name].append(float(v))
    return {k: {"holdout_top1": sum(v["holdout"]) / len(v["holdout"]) if v["holdout"] else None,
                "test_top1": sum(v["test"]) / len(v["test"]) if v["test"] else None,
                "runs": max(len(v["holdout"]), len(v["test"]))} for k, v in out.items()}


def family_table(folder: Path):
    """The family of the search in ``folder`` as a DataFrame with :data:`COLUMNS`."""
    found = read_search(folder, require_done=False)
    space = search_space(folder, found["best"])
    fam_path = folder / SearchFolder.FAMILY
    if fam_path.is_file():
        fam = read_family_csv(fam_path)
    else:
        fam = family_frame(found["best"])
    if "kind" not in fam.columns:
        fam["kind"] = "searched"
    fam["kind"] = fam["kind"].fillna("searched")
    trained = standalone_results(folder, space)
    rows = []
    for i, r in enumerate(fam.to_dict("records")):
        key = _canonical(r.get("arch"), space)
        sa = trained.get(key, {}) if key else {}
        top1 = r.get("top1")
        try:
            rows.append({"stage": int(r["stage"]), "kind": r["kind"], "flops": int(r["flops"]),
                         "params": int(r["params"]), "resolution": int(r["resolution"]),
                         "depth_mult": float(r["depth_mult"]), "width_mult": float(r["width_mult"]),
                         "supernet_top1": None if top1 is None or pd.isna(top1) else float(top1),
                         "standalone_top1": sa.get("holdout_top1"), "standalone_test_top1": sa.get("test_top1"),
                         "standalone_runs": sa.get("runs", 0), "arch": key or r.get("arch"),
                         **({"latency_ms": _number(r.get("latency_ms"))} if "latency_ms" in fam.columns else {})})
        except (KeyError, TypeError, ValueError, OverflowError):
            raise ScalenasError(f"{fam_path}: malformed family table: row {i + 1} needs numbers in "
                                f"{', '.join(FAMILY_NEEDS)}") from None
    columns = with_latency_column(COLUMNS, "latency_ms" in fam.columns)
    frame = pd.DataFrame(rows, columns=columns)
    return frame.sort_values(["stage"], kind="stable").reset_index(drop=True)


def _number(v: Any) -> float | None:
    return None if v is None or pd.isna(v) else float(v)


def with_latency_column(columns: list[str], latency: bool, name: str = "latency_ms") -> list[str]:
    """``columns`` with ``name`` after ``params`` (predicted ``latency_ms``, or ``measured_ms`` after it)."""
    if not latency:
        return list(columns)
    i = columns.index("latency_ms" if "latency_ms" in columns and name != "latency_ms" else "params") + 1
    return [*columns[:i], name, *columns[i:]]


def measure_family(folder: Path, frame):
    """``frame`` (:func:`family_table`) with ``measured_ms``: each member's exported model timed on this device,
    with the settings (runtime, device, batch, threads, repeats) of the search's latency table, or the defaults of
    :class:`scalenas.latency.table.LatencyOptions` (PyTorch, CPU, batch 1, one thread) for a search without one."""
    from scalenas.latency.table import LatencyOptions, options_from, time_network

    found = read_search(folder, require_done=False)
    space = search_space(folder, found["best"])
    table = search_latency_table(folder, space)
    options = LatencyOptions() if table is None else options_from(table.meta)
    measured = []
    for arch in frame["arch"]:
        sub = parse_subnet(json.loads(arch), space, allow_outside=True, source=f"{folder}: family")
        measured.append(time_network(space, sub, options).ms)
    out = frame.copy()
    out.insert(with_latency_column(list(frame.columns), True, "measured_ms").index("measured_ms"), "measured_ms",
               measured)
    return out


def _display(frame):
    """Human-readable copy (no arch): FLOPs/params with units, top-1 with 4 decimals, '-' for missing."""
    show = frame.drop(columns=["arch"]).copy().astype(object)
    show["flops"] = [format_flops(v) for v in frame["flops"]]
    show["params"] = [format_flops(v) for v in frame["params"]]
    show["depth_mult"] = [f"{v:.4g}" for v in frame["depth_mult"]]
    show["width_mult"] = [f"{v:.4g}" for v in frame["width_mult"]]
    for col in ("latency_ms", "measured_ms"):
        if col in frame.columns:
            show[col] = ["-" if v is None or pd.isna(v) else f"{v:.3f}" for v in frame[col]]
    for col in ("supernet_top1", "standalone_top1", "standalone_test_top1"):
        show[col] = ["-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"
                     for v in frame[col]]
    return show


def to_markdown(frame) -> str:
    """A GitHub markdown table, written by hand (tabulate is not a dependency)."""
    show = _display(frame)
    cols = list(show.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in show.itertuples(index=False):
        lines.append("| " + " | ".join(str(v).replace("|", "\\|") for v in r) + " |")
    return "\n".join(lines)


def render(frame, fmt: str) -> str:
    if fmt == "csv":
        return frame.to_csv(index=False).rstrip("\n")
    if fmt == "json":
        records = json.loads(frame.to_json(orient="records", double_precision=15))
        return json.dumps(records, indent=1)
    if fmt == "markdown":
        return to_markdown(frame)
    return _display(frame).to_string(index=False)


# ------------------------------------------------------------------------------------------ plots
def plot_family(frame, title: str) -> bytes:
    """PNG bytes: top-1 vs FLOPs (log-x) of the family; extrapolated members marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    fig.subplots_adjust(left=0.1, right=0.97, bottom=0.12, top=0.92)
    try:
        searched = frame[frame["kind"] != "extrapolated"]
        extra = frame[frame["kind"] == "extrapolated"]
        sn = searched.dropna(subset=["supernet_top1"])
        if not sn.empty:
            ax.plot(sn["flops"], sn["supernet_top1"], "k-*", markersize=11, label="searched: supernet top-1")
        sa = frame.dropna(subset=["standalone_top1"])
        if not sa.empty:
            ax.plot(sa["flops"], sa["standalone_top1"], "o-", color="tab:blue", label="standalone top-1")
            sx = sa[sa["kind"] == "extrapolated"]
            if not sx.empty:
                ax.plot(sx["flops"], sx["standalone_top1"], "D", color="tab:red", markersize=9,
                        label="extrapolated: standalone top-1")
        for k, r in enumerate(extra.itertuples(index=False)):
            ax.axvline(r.flops, color="tab:red", linestyle="--", alpha=0.5,
                       label="extrapolated member (FLOPs)" if k == 0 else None)
            ax.text(r.flops, 0.5, f"s{r.stage} extrapolated", transform=ax.get_xaxis_transform(), rotation=90,
                    fontsize=8, color="tab:red", ha="right", va="center")
        for r in searched.itertuples(index=False):
            ax.annotate(f"s{r.stage}", (r.flops, 0.02), xycoords=("data", "axes fraction"), fontsize=8,
                        color="0.3", ha="center", va="bottom")
        if not frame.empty:
            ax.set_xscale("log")
            lo, hi = float(frame["flops"].min()), float(frame["flops"].max())
            ax.set_xlim(lo / 1.4, hi * 1.4)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="lower right")
        return finish_plot(fig, ax, title, "top-1")
    finally:
        plt.close(fig)


def write_plots(folder: Path, frame) -> list[Path]:
    best = json.loads((folder / SearchFolder.BEST).read_text())
    name = f"{best.get('space', '?')}: {best.get('strategy', '?')} search"
    paths = []
    if (folder / SearchFolder.PARETO).is_file():
        pareto = read_table(folder / SearchFolder.PARETO, ("flops", "top1", "stage"), "pareto table")
        fam = family_frame(best)
        paths.append(atomic_write_bytes(folder / SearchFolder.PLOT, plot_pareto(pareto, fam, name)))
    paths.append(atomic_write_bytes(folder / SearchFolder.FAMILY_PLOT, plot_family(frame, f"{name}: family")))
    return paths


def report(run_dir: str | None, fmt: str = "table", plots: bool = True,
           measure_latency: bool = False) -> tuple[str, list[Path], Path]:
    """(rendered table, plot paths, search folder); ``measure_latency``: a ``measured_ms`` column
    (:func:`measure_family`)."""
    if fmt not in FORMATS:
        raise ScalenasError(f"--format {fmt!r}: choose from {', '.join(FORMATS)}")
    folder = find_search_dir(run_dir)
    frame = family_table(folder)
    if measure_latency:
        frame = measure_family(folder, frame)
    paths = write_plots(folder, frame) if plots else []
    return render(frame, fmt), paths, folder


