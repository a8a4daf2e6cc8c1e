"""What a run and its search folder record about their data and space, and the refusals when a command would use
other data or another space than the run it continues (fast: a cheap stand-in search, no supernet training)."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from scalenas.cli.main import main
from scalenas.errors import ScalenasError
from scalenas.report.search_report import write_reports
from scalenas.runs import RunFolder, SearchFolder
from scalenas.search.driver import run_search
from scalenas.search.strategies import make_strategy
from scalenas.spaces.arch import arch_record, load_arch, sample_subnet
from scalenas.spaces.flops import subnet_flops_params
from scalenas.spaces.space import load_space
from scalenas.spaces.targets import stage_targets
from scalenas.train.config import (TrainConfig, check_follows, data_record, follow_overrides, followed_record,
                                   load_job)
from scalenas.data.datasets import load_data

SPACE = load_space("digits-tiny")


def _score(subnets):
    return [0.3 + 0.04 * math.log(subnet_flops_params(SPACE, s)[0]) for s in subnets]


@pytest.fixture(scope="module")
def digits_record():
    cfg = load_job("digits", {"data": "digits", "data_seed": 0})
    return data_record(cfg, load_data("digits", seed=0))


@pytest.fixture
def search(tmp_path, digits_record):
    """A finished search folder with its data record and space, as `scalenas search` writes them."""
    folder = tmp_path / "run" / "search"
    strategy = make_strategy("markov", SPACE, stage_targets(SPACE, "4.5M"),
                             dict(population=4, generations=1, elites=2, seed=0))
    run_search(SPACE, strategy, _score, folder, progress=False, on_generation=lambda s: write_reports(folder, s))
    SearchFolder(folder).write_space(SPACE.raw)
    SearchFolder(folder).write_data_record(digits_record)
    return folder


def _last_line(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_data_record_names_the_data_and_identifies_its_content(digits_record, tmp_path):
    assert digits_record["data"] == "digits" and digits_record["num_classes"] == 10
    assert sum(digits_record["class_counts"]) == 1797
    RunFolder(tmp_path).write_data_record(digits_record)
    assert followed_record(tmp_path)[0] == digits_record
    # the same data split another way is the same data; a follower takes the run's keys unless given
    other_split = load_data("digits", seed=5)
    assert check_follows(digits_record, other_split, "the run") == []
    got = follow_overrides(digits_record, {"data_seed": 3, "steps": 10})
    assert got["data"] == "digits" and got["data_seed"] == 3 and got["steps"] == 10
    assert got["holdout_frac"] == digits_record["holdout_frac"]


def test_other_class_count_or_classes_are_refused_in_one_line(digits_record, tmp_path):
    x = np.random.default_rng(0).random((60, 1, 8, 8), dtype=np.float32)
    np.savez(tmp_path / "three.npz", x=x, y=np.arange(60) % 3)
    three = load_data(str(tmp_path / "three.npz"), seed=0)
    with pytest.raises(ScalenasError, match="has 3 classes but the run was trained on digits with 10 classes"):
        check_follows(digits_record, three, "the run")
    renamed = dict(digits_record, classes=[f"c{i}" for i in range(10)])
    with pytest.raises(ScalenasError, match="other classes"):
        check_follows(renamed, load_data("digits", seed=0), "the run")
    changed = dict(digits_record, fingerprint="0" * 16)
    assert "not the same data" in check_follows(changed, load_data("digits", seed=0), "the run")[0]


def test_train_family_refuses_data_with_another_class_count(search, tmp_path, capsys):
    x = np.random.default_rng(0).random((60, 1, 8, 8), dtype=np.float32)
    np.savez(tmp_path / "three.npz", x=x, y=np.arange(60) % 3)
    assert main(["train", "--family", str(search), "--data", str(tmp_path / "three.npz"), "--steps", "1",
                 "--no-progress"]) == 2
    line = _last_line(capsys)
    assert "3 classes" in line and "10 classes" in line
    assert not (search / "standalone.csv").exists() and not list(search.glob("family-*/*/result.json"))


def test_a_search_whose_run_is_gone_and_records_no_data_is_refused(search, capsys):
    (search / SearchFolder.DATA).unlink()
    cfg = json.loads((search / SearchFolder.CONFIG).read_text()) if (search / SearchFolder.CONFIG).is_file() else {}
    cfg["run_dir"] = str(search.parent / "moved-away")
    (search / SearchFolder.CONFIG).write_text(json.dumps(cfg))
    assert main(["train", "--family", str(search), "--steps", "1", "--no-progress"]) == 2
    line = _last_line(capsys)
    assert "moved-away" in line and "--data" in line


def test_report_never_mixes_datasets(search, digits_record, capsys):
    fam = pd.read_csv(search / "family.csv")
    rows = pd.DataFrame({"stage": fam["stage"], "kind": "searched", "arch": fam["arch"], "holdout_top1": 0.5,
                         "test_top1": 0.5, "run_dir": [f"r{i}" for i in range(len(fam))],
                         "data_fingerprint": digits_record["fingerprint"]})
    rows.to_csv(search / "standalone.csv", index=False)
    assert main(["report", str(search), "--no-plots"]) == 0
    out = capsys.readouterr()
    assert digits_record["fingerprint"] in out.out + out.err
    rows.loc[0, "data_fingerprint"] = "feedfacefeedface"
    rows.to_csv(search / "standalone.csv", index=False)
    assert main(["report", str(search), "--no-plots"]) == 2
    assert "2 different datasets" in _last_line(capsys)
    rows["data_fingerprint"] = "feedfacefeedface"
    rows.to_csv(search / "standalone.csv", index=False)
    assert main(["report", str(search), "--no-plots"]) == 2
    assert "other data" in _last_line(capsys)


def test_member_files_carry_their_space_and_refuse_a_lost_or_changed_one(search, tmp_path):
    import random

    fitted = dict(SPACE.raw, num_classes=7)  # a space no file holds: num_classes fitted to the data
    SearchFolder(search).write_space(fitted)
    space = load_space(str(SearchFolder(search).space_file))
    _, sub = sample_subnet(space, random.Random(0))
    member = search / "member_s9.json"
    member.write_text(json.dumps(arch_record(sub, space, search, space_file=SearchFolder(search).space_file)))
    got, got_space = load_arch(str(member))
    assert got == sub and got_space.num_classes == 7 and json.loads(member.read_text())["space_file"] == "space.yaml"
    # embedded: rebuilds with no file at all
    alone = tmp_path / "alone.json"
    alone.write_text(json.dumps(arch_record(sub, space, embed=True)))
    assert load_arch(str(alone))[1].num_classes == 7
    # the space file edited: its content no longer has the member's key
    SearchFolder(search).write_space(dict(fitted, num_classes=8))
    with pytest.raises(ScalenasError, match="does not hold the architecture's space"):
        load_arch(str(member))
    # deleted and not embedded: named, with the way out
    SearchFolder(search).space_file.unlink()
    with pytest.raises(ScalenasError, match="space file .* is missing and the space is not embedded .*--space"):
        load_arch(str(member))
    with pytest.warns(UserWarning, match="other content"):  # --space wins, and says that the content differs
        assert load_arch(str(member), SPACE)[1] == SPACE


def test_help_states_the_default_jobs_values(capsys):
    with pytest.raises(SystemExit):
        main(["train-supernet", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    job = load_job("animals")
    assert f"default {job.space} (jobs/animals.yaml)" in text and f"default {job.data} (jobs/animals.yaml)" in text
    assert "default digits-tiny" not in text and TrainConfig().space == "digits-tiny"
