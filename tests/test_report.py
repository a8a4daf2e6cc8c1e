"""``scalenas report``: the family table in four formats that parse back, standalone results, plots; demo inputs."""
from __future__ import annotations

import functools
import io
import json
import math

import numpy as np
import pandas as pd
import pytest

from scalenas.spaces.arch import Subnet
from scalenas.cli.main import main
from scalenas.report.family import COLUMNS
from scalenas.spaces.targets import reachable_target as pick_target
from scalenas.report.search_report import write_reports
from scalenas.search.driver import run_search
from scalenas.search.strategies import make_strategy
from scalenas.spaces.flops import subnet_flops_params
from scalenas.spaces.space import load_space
from scalenas.spaces.targets import check_targets, feasible_ranges, stage_targets

SPACE = load_space("digits-tiny")
PNG = b"\x89PNG\r\n\x1a\n"


def score(subnets: list[Subnet]) -> list[float]:
    out = []
    for sub in subnets:
        flops, _ = subnet_flops_params(SPACE, sub)
        kernels = [SPACE.ops[op].kernel for layers in sub.base for op in layers]
        out.append(0.3 + 0.04 * math.log(flops) + 0.01 * float(np.mean(kernels)))
    return out


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    """A tiny finished search with 2 extrapolated members, a standalone.csv and one `scalenas train` result."""
    folder = tmp_path_factory.mktemp("rep") / "run" / "search"
    strategy = make_strategy("markov", SPACE, stage_targets(SPACE, "4.5M"),
                             dict(population=6, generations=2, elites=2, seed=1))
    run_search(SPACE, strategy, score, folder, progress=False, on_generation=functools.partial(write_reports, folder))
    assert main(["extrapolate", "--run", str(folder), "--steps", "2"]) == 0
    fam = pd.read_csv(folder / "family.csv")
    s1, s4 = fam.loc[fam["stage"] == 1, "arch"].iloc[0], fam.loc[fam["stage"] == 4, "arch"].iloc[0]
    pd.DataFrame([{"arch": s1, "seed": 0, "holdout_top1": 0.8, "test_top1": 0.7},
                  {"arch": s1, "seed": 1, "holdout_top1": 0.9, "test_top1": 0.8}]).to_csv(
        folder / "standalone.csv", index=False)
    run = folder.parent / "20250101-000000-train-member_s4"  # a `scalenas train` run beside the search
    run.mkdir()
    (run / "result.json").write_text(json.dumps({"arch_json": s4, "holdout_top1": 0.95, "test_top1": 0.93}))
    return folder


def family(search):
    return pd.read_csv(search / "family.csv")


def test_table_and_plots(search, capsys):
    assert main(["report", str(search.parent)]) == 0
    out = capsys.readouterr().out
    assert "extrapolated" in out and "searched" in out and "family.png" in out and "fvcore" in out
    for name in ("pareto.png", "family.png"):
        assert (search / name).read_bytes().startswith(PNG)


def test_csv_and_json_parse_back(search, capsys):
    assert main(["report", str(search), "--format", "csv", "--no-plots"]) == 0
    frame = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert list(frame.columns) == COLUMNS
    fam = family(search)
    assert frame["stage"].tolist() == fam["stage"].tolist() and frame["flops"].tolist() == fam["flops"].tolist()
    assert frame["kind"].tolist() == ["searched"] * 4 + ["extrapolated"] * 2
    assert np.allclose(frame["supernet_top1"][:4], fam["top1"][:4]) and frame["supernet_top1"][4:].isna().all()
    by_stage = frame.set_index("stage")
    assert by_stage.loc[1, "standalone_top1"] == pytest.approx(0.85)  # mean of the two standalone.csv rows
    assert by_stage.loc[1, "standalone_test_top1"] == pytest.approx(0.75) and by_stage.loc[1, "standalone_runs"] == 2
    assert by_stage.loc[4, "standalone_top1"] == pytest.approx(0.95)  # the result.json of a train run
    assert pd.isna(by_stage.loc[0, "standalone_top1"]) and pd.isna(by_stage.loc[5, "standalone_top1"])

    assert main(["report", str(search), "--format", "json", "--no-plots"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["stage"] for r in records] == list(range(6)) and set(records[0]) == set(COLUMNS)
    assert records[0]["supernet_top1"] == pytest.approx(fam["top1"][0], abs=1e-12)
    assert records[5]["supernet_top1"] is None and records[4]["standalone_top1"] == pytest.approx(0.95)


def test_markdown_parses_back(search, capsys):
    assert main(["report", str(search), "--format", "markdown", "--no-plots"]) == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == [c for c in COLUMNS if c != "arch"] and set(lines[1]) <= set("|-")
    rows = [[c.strip() for c in l.strip("|").split("|")] for l in lines[2:]]
    assert len(rows) == 6 and [r[1] for r in rows] == ["searched"] * 4 + ["extrapolated"] * 2
    assert [int(r[4]) for r in rows] == family(search)["resolution"].tolist()
    assert rows[5][7] == "-" and rows[1][8] == "0.8500"


def test_bad_inputs(tmp_path, capsys, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("scalenas: error:") and "\n" not in err and "no finished search" in err
    with pytest.raises(SystemExit) as exc:  # argparse: one line, exit 2
        main(["report", str(tmp_path), "--format", "xml"])
    assert exc.value.code == 2 and "invalid choice" in capsys.readouterr().err
    monkeypatch.chdir(empty)
    assert main(["demo", "--steps", "0"]) == 2
    assert "--steps" in capsys.readouterr().err
    (empty / "run").mkdir()
    (empty / "run" / "checkpoint.pt").write_bytes(b"")
    assert main(["demo", "--out", str(empty / "run")]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_demo_target_is_reachable_by_every_stage():
    t = pick_target(SPACE)
    lo, hi = feasible_ranges(SPACE)[-1]
    assert lo <= t <= hi
    check_targets(SPACE, stage_targets(SPACE, str(t)), 0.1)  # raises if some stage cannot reach its band
