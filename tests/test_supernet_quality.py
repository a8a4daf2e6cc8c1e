"""jobs/bench/supernet_quality.py on tiny settings: outputs, statistics, and that every cache is reused."""
from __future__ import annotations

import importlib.util
import math
import time
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "jobs" / "bench" / "supernet_quality.py"

TINY = ["--data", "digits", "--space", "digits-tiny", "--subnets", "8", "--steps", "20", "--standalone-steps", "25",
        "--batch-size", "32", "--calib-batch-size", "32", "--threads", "1", "--seed", "0"]
RECIPE_COLUMNS = ["recipe", "overrides", "steps", "train_wall_s", "kendall_tau", "kendall_p", "spearman_rho",
                  "spearman_p", "mean_gap", "gap_stage0", "gap_stage1", "gap_stage2", "gap_stage3", "n_subnets",
                  "data", "space", "standalone_cached", "supernet_cached", "supernet_dir", "threads"]
SUBNET_COLUMNS = ["recipe", "subnet", "stage", "flops", "supernet_top1", "supernet_loss", "standalone_top1", "gap"]


def _load():
    spec = importlib.util.spec_from_file_location("supernet_quality", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_supernet_quality_tiny(tmp_path, torch_threads):
    mod = _load()
    out, prefix = tmp_path / "runs", tmp_path / "bench" / "sq"
    common = TINY + ["--out", str(out), "--out-csv", str(prefix)]
    t0 = time.perf_counter()
    # base trains the supernet and the 8 standalone models; calib_more only re-evaluates base's checkpoint.
    assert mod.main(common + ["--recipe", "base", "--recipe", "calib_more"]) == 0
    first = time.perf_counter() - t0

    rows = pd.read_csv(f"{prefix}.csv")
    subs = pd.read_csv(f"{prefix}_subnets.csv")
    assert set(RECIPE_COLUMNS) <= set(rows.columns)
    assert set(SUBNET_COLUMNS) <= set(subs.columns)
    assert list(rows["recipe"]) == ["base", "calib_more"]
    assert (rows["n_subnets"] == 8).all() and len(subs) == 16
    assert subs[subs["recipe"] == "base"]["stage"].value_counts().to_dict() == {0: 2, 1: 2, 2: 2, 3: 2}
    for col in ("kendall_tau", "spearman_rho"):
        assert all(math.isfinite(v) and -1.0 <= v <= 1.0 for v in rows[col]), rows[col]
    assert all(0.0 <= v <= 1.0 for v in rows["kendall_p"])
    assert subs["supernet_top1"].between(0, 1).all() and subs["standalone_top1"].between(0, 1).all()
    # gap = standalone - supernet in points; mean_gap is its mean
    base_subs = subs[subs["recipe"] == "base"]
    assert rows.loc[0, "mean_gap"] == pytest.approx(
        100 * (base_subs["standalone_top1"] - base_subs["supernet_top1"]).mean(), abs=1e-3)
    # standalone runs trained once, for the first recipe, and reused by the second
    assert list(rows["standalone_cached"]) == [0, 8]
    standalone = sorted((out / "standalone").glob("st-*/result.json"))
    assert len(standalone) == 8
    # calib_more shares base's checkpoint (same training config), with 4x the calibration batches
    assert rows.loc[1, "supernet_dir"] == rows.loc[0, "supernet_dir"]
    assert list(rows["supernet_cached"]) == [False, True]
    assert list(rows["bn_calib_batches"]) == [4, 16]
    assert len(list((out / "supernets").glob("sn-*"))) == 1
    md = Path(f"{prefix}.md").read_text()
    assert "Kendall tau >= 0.7" in md and "| base |" in md and "--recipe calib_more" in md

    # Rerun with a recipes file naming the same recipe under another name: everything comes from the caches and
    # the numbers are the same.
    mtimes = {p: p.stat().st_mtime_ns for p in standalone}
    recipes = tmp_path / "recipes.yaml"
    recipes.write_text("again: {}\n")
    t1 = time.perf_counter()
    assert mod.main(common + ["--recipes", str(recipes)]) == 0
    second = time.perf_counter() - t1
    again = pd.read_csv(f"{prefix}.csv")
    assert list(again["recipe"]) == ["again"]
    assert again.loc[0, "standalone_cached"] == 8 and bool(again.loc[0, "supernet_cached"])
    assert again.loc[0, "supernet_dir"] == rows.loc[0, "supernet_dir"]
    assert again.loc[0, "kendall_tau"] == rows.loc[0, "kendall_tau"]
    assert again.loc[0, "mean_gap"] == rows.loc[0, "mean_gap"]
    assert {p: p.stat().st_mtime_ns for p in standalone} == mtimes
    assert second < first

    # a bad recipe file is one line and exit code 2
    recipes.write_text("bad: {holdout_frac: 0.3}\n")
    assert mod.main(common + ["--recipes", str(recipes)]) == 2

    # --standalone-csv: a fresh cache folder reuses the standalone numbers of the subnet table written above
    # (nothing standalone is trained again) and gives the same statistics for the same supernet recipe.
    table = tmp_path / "earlier_subnets.csv"
    table.write_bytes(Path(f"{prefix}_subnets.csv").read_bytes())
    fresh, prefix2 = tmp_path / "fresh", tmp_path / "bench2" / "sq"
    again_args = TINY + ["--out", str(fresh), "--out-csv", str(prefix2), "--recipe", "base",
                         "--standalone-csv", str(table)]
    assert mod.main(again_args) == 0
    reused = pd.read_csv(f"{prefix2}.csv")
    assert reused.loc[0, "standalone_cached"] == 8
    assert not (fresh / "standalone").exists()
    assert reused.loc[0, "kendall_tau"] == rows.loc[0, "kendall_tau"]
    assert str(table) in Path(f"{prefix2}.md").read_text()
    # a missing or wrong table is one line and exit code 2
    assert mod.main(TINY + ["--out", str(fresh), "--standalone-csv", str(tmp_path / "nope.csv")]) == 2
    assert mod.main(TINY + ["--out", str(fresh), "--standalone-csv", str(recipes)]) == 2
