"""A user's own data and own space, end to end, as a new user runs it: from another directory, through the CLI.

A 12-class ImageFolder (no shipped space has 12 classes) and a space YAML outside the checkout (another name,
num_classes 12, another head) go through train-supernet -> search -> extrapolate -> train --family -> report ->
export (ONNX); every step must use that data and that space (class count, data fingerprint, members trainable,
report consistent), and the ways out of the run's data are refused in one line.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from scalenas.cli.main import main
from userdata import CLASSES, SPACE_NAME, make_image_folder, make_space

pytestmark = pytest.mark.slow


def _cli(cwd: Path, *args: str, ok: bool = True, subprocess_: bool = False) -> subprocess.CompletedProcess:
    """``scalenas ARGS`` run in ``cwd``: in this process (the CLI's own ``main``, as the console script calls it;
    ~3 s faster per call than a fresh interpreter) or, with ``subprocess_``, as a separate process."""
    if subprocess_:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        proc = subprocess.run([sys.executable, "-m", "scalenas", *args], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=600)
    else:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 2
        proc = subprocess.CompletedProcess(["scalenas", *args], code, out.getvalue(), err.getvalue())
    if ok:
        assert proc.returncode == 0, f"scalenas {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _refused(proc: subprocess.CompletedProcess, *words: str) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    for w in words:
        assert w in line, line
    return line


@pytest.fixture(scope="module")
def user_problem(tmp_path_factory):
    """(work dir the user runs in, data dir, space file): data and space live outside the checkout."""
    home = tmp_path_factory.mktemp("user")
    data = make_image_folder(home / "my-images", per_class=16)
    space = make_space(home / "spaces" / f"{SPACE_NAME}.yaml")
    work = home / "work"
    work.mkdir()
    return work, data, space


def test_own_data_and_space_flow_through_every_command(user_problem):
    work, data, space = user_problem
    # 1. train-supernet on the user's data and space (relative paths, from the user's own directory)
    _cli(work, "train-supernet", "--data", "../my-images", "--space", "../spaces/user12.yaml", "--store-size", "28",
         "--steps", "4", "--batch-size", "16", "--no-sandwich", "--no-inplace-distill", "--threads", "1",
         "--out", "run", "--no-progress", subprocess_=True)  # the installed entry point, a fresh process
    run = work / "run"
    rec = json.loads((run / "data.json").read_text())
    assert rec["data"] == str(data.resolve()) and rec["num_classes"] == CLASSES
    assert rec["classes"] == sorted(p.name for p in data.iterdir())
    run_space = (run / "space.yaml").read_text()
    assert f"num_classes: {CLASSES}" in run_space and f"name: {SPACE_NAME}" in run_space

    # 2. search: the folder gets its own copies of the data record and the space
    target = subprocess.run([sys.executable, "-c", (
        "from scalenas.spaces.targets import reachable_target; from scalenas.spaces.space import load_space; "
        f"print(reachable_target(load_space({str(space)!r})))")], capture_output=True, text=True,
        check=True).stdout.strip()
    _cli(work, "search", "--run", "run", "--target-flops", target, "--population", "4", "--generations", "1",
         "--elites", "2", "--workers", "0", "--no-progress")
    search = run / "search"
    assert json.loads((search / "data.json").read_text())["fingerprint"] == rec["fingerprint"]
    config = json.loads((search / "search_config.json").read_text())
    assert Path(config["run_dir"]).is_absolute() and Path(config["supernet"]).is_file()

    # 3. extrapolate: member files carry their space (relative to themselves) and its content key
    _cli(work, "extrapolate", "--run", "run/search", "--steps", "1")
    members = sorted(search.glob("member_s*.json"))
    assert members
    member = json.loads(members[-1].read_text())
    assert member["space"] == SPACE_NAME and member["space_file"] == "space.yaml" and member["space_key"]
    # fewer steps than the folder holds never deletes a member silently
    (search / "member_s9.json").write_text(members[-1].read_text())
    _refused(_cli(work, "extrapolate", "--run", "run/search", "--steps", "1", ok=False), "member", "--replace")
    (search / "member_s9.json").unlink()

    # 4. train --family follows the run's data by default (not the embedded animals)
    out = _cli(work, "train", "--family", "run/search", "--steps", "2", "--batch-size", "16", "--threads", "1",
               "--no-progress").stdout
    assert str(data.resolve()) in out
    standalone = pd.read_csv(search / "standalone.csv")
    family = pd.read_csv(search / "family.csv")
    assert sorted(standalone["stage"]) == sorted(family["stage"])
    assert set(standalone["data_fingerprint"]) == {rec["fingerprint"]}
    for run_dir in standalone["run_dir"]:
        result = json.loads((work / run_dir / "result.json").read_text())
        assert result["num_classes"] == CLASSES and result["data"] == str(data.resolve())
        assert result["data_fingerprint"] == rec["fingerprint"]

    # 5. report: one dataset, every member with its standalone top-1, the data named
    rep = _cli(work, "report", "run/search", "--format", "json", "--no-plots")
    rows = json.loads(rep.stdout)
    rows = rows if isinstance(rows, list) else rows.get("members", rows)
    assert len(rows) == len(family) and all(r["standalone_top1"] is not None for r in rows)
    assert rec["fingerprint"] in rep.stderr

    # 6. export the largest trained member to ONNX and run it in onnxruntime: 12 outputs
    last = standalone.sort_values("stage")["run_dir"].iloc[-1]
    _cli(work, "export", "--model", f"{last}/final.pt", "--format", "onnx", "--out", "largest.onnx")
    import numpy as np
    import onnxruntime as ort

    sess = ort.InferenceSession(str(work / "largest.onnx"), providers=["CPUExecutionProvider"])
    res = int(member["resolution"]) if last.endswith(f"s{member['stage']}") else None
    inp = sess.get_inputs()[0]
    size = res or 28
    logits = sess.run(None, {inp.name: np.zeros((2, 1, size, size), np.float32)})[0]
    assert logits.shape == (2, CLASSES)

    # 7. a member file alone, moved away from its search folder, still rebuilds (its space is embedded)
    _cli(work, "grow", "--model", f"{standalone.sort_values('stage')['run_dir'].iloc[0]}/final.pt", "--to",
         str(members[-1]), "--out", "grown.pt")
    moved = work / "elsewhere"
    moved.mkdir()
    _cli(moved, "export", "--arch", str(members[-1]), "--out", "m.pt")
    _cli(moved, "train", "--arch", "m.pt", "--data", str(data), "--store-size", "28", "--steps", "1",
         "--batch-size", "16", "--threads", "1", "--no-progress", "--out", "t")

    # the ways out of the run's data are refused in one line
    _refused(_cli(work, "train", "--arch", str(members[-1]), "--data", "animals", "--steps", "1", "--no-progress",
                  ok=False), "10 classes", str(CLASSES))
    (search / "space.yaml").rename(search / "space.yaml.away")
    try:
        _refused(_cli(work, "flops", "--arch", str(members[-1]), ok=False), "space file", "--space")
        # --space is the way out
        _cli(work, "flops", "--arch", str(members[-1]), "--space", str(search / "space.yaml.away"))
    finally:
        (search / "space.yaml.away").rename(search / "space.yaml")


def test_sampled_lines_of_a_user_space_work_in_every_command(user_problem, tmp_path):
    work, data, space = user_problem
    line = _cli(work, "sample", "--space", str(space), "--n", "1", subprocess_=True).stdout.strip()
    arch = json.loads(line)
    assert arch["space"] == SPACE_NAME and Path(arch["space_file"]).resolve() == space.resolve()
    # from another directory: flops, export, train
    _cli(tmp_path, "flops", "--arch", line)
    _cli(tmp_path, "export", "--arch", line, "--out", "m.pt")
    out = _cli(tmp_path, "train", "--arch", line, "--data", str(data), "--store-size", "28", "--steps", "1",
               "--batch-size", "16", "--threads", "1", "--no-progress", "--out", "t").stdout
    assert "holdout top-1" in out
    # a YAML path in the 'space' field works too, relative to the JSON file
    (tmp_path / "a.json").write_text(json.dumps({**{k: v for k, v in arch.items() if k not in (
        "space_file", "space_key")}, "space": os.path.relpath(space, tmp_path)}))
    _cli(tmp_path.parent, "flops", "--arch", str(tmp_path / "a.json"))
    # the content key must match what is found
    edited = dict(arch, space_key="0" * 64)
    _refused(_cli(tmp_path, "flops", "--arch", json.dumps(edited), ok=False), "space_key")
