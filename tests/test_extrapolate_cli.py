"""``scalenas extrapolate`` on a real (tiny, cheap-evaluator) search folder: files, FLOPs ladder, idempotence."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest

from scalenas.spaces.arch import Subnet, read_arch
from scalenas.cli.main import main
from scalenas.report.search_report import write_reports
from scalenas.search.driver import run_search
from scalenas.search.strategies import make_strategy
from scalenas.spaces.flops import subnet_flops_params
from scalenas.spaces.space import load_space
from scalenas.spaces.targets import stage_targets

SPACE = load_space("digits-tiny")


def score(subnets: list[Subnet]) -> list[float]:
    """A cheap deterministic stand-in for the supernet: more FLOPs and larger kernels score higher."""
    out = []
    for sub in subnets:
        flops, _ = subnet_flops_params(SPACE, sub)
        kernels = [SPACE.ops[op].kernel for layers in sub.base for op in layers]
        out.append(0.3 + 0.04 * math.log(flops) + 0.01 * float(np.mean(kernels)))
    return out


def make_search(folder, seed: int = 3):
    strategy = make_strategy("markov", SPACE, stage_targets(SPACE, "4.5M"),
                             dict(population=6, generations=2, elites=2, seed=seed))
    run_search(SPACE, strategy, score, folder, progress=False,
               on_generation=lambda s: write_reports(folder, s))
    return folder


@pytest.fixture(scope="module")
def search_template(tmp_path_factory):
    return make_search(tmp_path_factory.mktemp("tpl") / "run" / "search")


@pytest.fixture
def search(tmp_path, search_template):
    dst = tmp_path / "run" / "search"
    shutil.copytree(search_template, dst)
    return dst


def test_members_files_family_rows_and_ladder(search, capsys):
    assert main(["extrapolate", "--run", str(search.parent), "--steps", "2"]) == 0  # a run holding a search
    assert "member_s4.json" in capsys.readouterr().out
    best = json.loads((search / "best.json").read_text())
    fam = pd.read_csv(search / "family.csv")
    assert fam["kind"].tolist() == ["searched"] * 4 + ["extrapolated"] * 2
    assert fam["stage"].tolist() == [0, 1, 2, 3, 4, 5]
    ext = fam[fam["kind"] == "extrapolated"]
    assert ext["top1"].isna().all() and ext["flops"].gt(0).all() and ext["params"].gt(0).all()
    doc = json.loads((search / "extrapolation.json").read_text())
    assert doc["growth"] == pytest.approx(2.0) and doc["tolerance"] == best["tolerance"]
    u = doc["direction"]
    assert math.isclose(math.sqrt(u["depth"] ** 2 + u["width"] ** 2 + u["resolution"] ** 2), 1.0, rel_tol=1e-9)
    assert len(doc["step_lengths"]) == 2 and len(doc["flops_ratios"]) == 2
    prev = best["family"][-1]["flops"]
    for k, stage in enumerate((4, 5)):
        sub = read_arch(str(search / f"member_s{stage}.json"), allow_outside=True)  # JSON round trip
        flops, params = subnet_flops_params(SPACE, sub)
        row = ext[ext["stage"] == stage].iloc[0]
        assert (flops, params) == (row["flops"], row["params"]) and sub.to_json() == row["arch"]
        assert SPACE.stage_of(sub.depth, sub.width, sub.resolution) is None  # outside the supernet
        assert abs(flops / (2.0 * prev) - 1.0) <= doc["tolerance"]  # each ≈ growth × the previous
        assert doc["flops_ratios"][k] == pytest.approx(flops / prev)
        prev = flops


def test_rerun_replaces_previous_extrapolation(search):
    assert main(["extrapolate", "--run", str(search), "--steps", "3"]) == 0
    assert sorted(p.name for p in search.glob("member_s*.json")) == ["member_s4.json", "member_s5.json",
                                                                      "member_s6.json"]
    before = {p.name: p.read_bytes() for p in search.glob("member_s*.json")}
    # fewer steps than the folder holds would delete member_s6.json: refused, nothing changed
    assert main(["extrapolate", "--run", str(search), "--steps", "2"]) == 2
    assert {p.name: p.read_bytes() for p in search.glob("member_s*.json")} == before
    assert main(["extrapolate", "--run", str(search), "--steps", "2", "--replace"]) == 0
    first = (search / "family.csv").read_bytes()
    assert main(["extrapolate", "--run", str(search), "--steps", "2"]) == 0
    assert (search / "family.csv").read_bytes() == first
    assert sorted(p.name for p in search.glob("member_s*.json")) == ["member_s4.json", "member_s5.json"]
    fam = pd.read_csv(search / "family.csv")
    assert (fam["kind"] == "extrapolated").sum() == 2 and (fam["kind"] == "searched").sum() == 4
    assert main(["extrapolate", "--run", str(search), "--steps", "1", "--growth", "1.5", "--replace"]) == 0
    doc = json.loads((search / "extrapolation.json").read_text())
    assert doc["growth"] == 1.5 and 1.5 * 0.9 <= doc["flops_ratios"][0] <= 1.5 * 1.1


def test_default_is_the_most_recent_search(tmp_path, monkeypatch, search_template):
    monkeypatch.chdir(tmp_path)
    dst = tmp_path / "results" / "runs" / "20250101-000000-digits-tiny" / "search"
    shutil.copytree(search_template, dst)
    assert main(["extrapolate", "--steps", "1"]) == 0
    assert (dst / "member_s4.json").is_file()


@pytest.mark.parametrize("argv, word", [
    (["--steps", "0"], "--steps"),
    (["--steps", "2", "--growth", "1"], "--growth"),
    (["--steps", "2", "--growth", "0.5"], "--growth"),
])
def test_bad_numbers(search, capsys, argv, word):
    assert main(["extrapolate", "--run", str(search), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("scalenas: error:") and "\n" not in err and word in err


def test_no_search_or_unfinished_search(tmp_path, search, capsys, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    for argv, word in ((["--run", str(empty)], "no finished search"),
                       (["--run", str(tmp_path / "nope")], "not a directory")):
        assert main(["extrapolate", "--steps", "1", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and word in err
    monkeypatch.chdir(empty)  # no results/runs here
    assert main(["extrapolate", "--steps", "1"]) == 2
    assert "no finished search" in capsys.readouterr().err
    state = json.loads((search / "state.json").read_text())
    state["done"] = False
    (search / "state.json").write_text(json.dumps(state))
    assert main(["extrapolate", "--run", str(search), "--steps", "1"]) == 2
    assert "not finished" in capsys.readouterr().err
