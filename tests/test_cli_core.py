"""The core CLI: space show, sample, flops, export; every bad input is exit 2 and one line on stderr."""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scalenas.spaces.arch import extreme_subnets, parse_subnet, sample_subnet
from scalenas.train.checkpoint import save_checkpoint
from scalenas.cli.main import main
from scalenas.spaces.flops import subnet_flops_params
from scalenas.models.registry import load_model, load_model_file
from scalenas.spaces.space import load_space
from scalenas.models.standalone import StandaloneNet
from scalenas.models.supernet import export_subnet

pytestmark = pytest.mark.usefixtures("torch_threads")

SHIPPED = ["digits-tiny", "cifar-mbv3", "scalenet-mbv3"]


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run ``scalenas ARGV`` in-process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse errors
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc: int, err: str, *words: str) -> None:
    assert rc == 2, err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err and err.startswith("scalenas")
    for w in words:
        assert w in err, err


def _console_script() -> list[str]:
    exe = Path(sys.executable).parent / "scalenas"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("scalenas")
    return [found] if found else [sys.executable, "-m", "scalenas.cli"]


def _digits_arch(stage: int = 2, seed: int = 0) -> dict:
    return sample_subnet(load_space("digits-tiny"), random.Random(seed), stage=stage)[1].to_dict()


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory, tiny_supernet):
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    space = tiny_supernet.space
    save_checkpoint(path, {"space": space.name, "space_yaml": space.raw, "space_path": space.path,
                           "model": tiny_supernet.state_dict()})
    return path


# ------------------------------------------------------------------------------------------ space show
@pytest.mark.parametrize("name", SHIPPED)
def test_space_show(capsys, name):
    rc, out, err = cli(capsys, "space", "show", name)
    assert rc == 0 and err == ""
    space = load_space(name)
    assert out.startswith(f"space {name}")
    assert sum(line.strip().startswith("stage ") for line in out.splitlines()) == space.num_stages
    assert f"conv1x1 -> {space.head_channels}" in out
    assert "fvcore MACs" in out and f"{space.num_base_networks():,}" in out
    for s in range(len(space.scaling)):
        assert any(line.split()[:1] == [str(s)] for line in out.splitlines())


def test_space_show_path_and_list(capsys):
    path = load_space("cifar-mbv3").path
    rc, out, _ = cli(capsys, "space", "show", path)
    assert rc == 0 and "space cifar-mbv3" in out
    rc, out, _ = cli(capsys, "space", "list")
    assert rc == 0 and out.split() == sorted(out.split()) and set(SHIPPED) <= set(out.split())


# ------------------------------------------------------------------------------------------ sample
def test_sample_is_reproducible_json_lines(capsys):
    rc, out, err = cli(capsys, "sample", "--space", "digits-tiny", "--n", "3", "--seed", "1")
    assert rc == 0 and err == ""
    lines = out.strip().splitlines()
    assert len(lines) == 3
    space = load_space("digits-tiny")
    for line in lines:
        row = json.loads(line)
        sub = parse_subnet(row, space)
        assert (row["flops"], row["params"]) == subnet_flops_params(space, sub)
        assert row["stage"] == space.stage_of(sub.depth, sub.width, sub.resolution)
    assert cli(capsys, "sample", "--space", "digits-tiny", "--n", "3", "--seed", "1")[1] == out
    assert cli(capsys, "sample", "--space", "digits-tiny", "--n", "3", "--seed", "2")[1] != out
    rc, out, _ = cli(capsys, "sample", "--space", "scalenet-mbv3", "--n", "4", "--stage", "3")
    assert rc == 0 and all(json.loads(l)["stage"] == 3 for l in out.splitlines())


@pytest.mark.slow
def test_console_script_subprocess(tmp_path):
    """The installed console script, for real: a good call and a bad one (no traceback, exit 2)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    good = subprocess.run(_console_script() + ["sample", "--space", "digits-tiny", "--n", "3", "--seed", "1"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert good.returncode == 0, good.stderr
    rows = [json.loads(l) for l in good.stdout.strip().splitlines()]
    assert len(rows) == 3 and all({"flops", "params"} <= set(r) for r in rows)
    bad = subprocess.run(_console_script() + ["flops", "--arch", '{"space": "digits-tiny", "base": [']
                         + ["--check-fvcore"], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert_one_line_error(bad.returncode, bad.stderr, "malformed JSON")
    assert bad.stdout == ""


# ------------------------------------------------------------------------------------------ flops
def test_flops_inline_json_check_fvcore(capsys):
    arch = _digits_arch(stage=3)
    rc, out, err = cli(capsys, "flops", "--arch", json.dumps(arch), "--check-fvcore", "--json")
    assert rc == 0, err
    res = json.loads(out)
    assert res["agree"] is True and res["fvcore_flops"] == res["flops"]
    assert (res["flops"], res["params"]) == subnet_flops_params(load_space("digits-tiny"),
                                                                parse_subnet(arch))
    assert res["stage"] == 3 and res["arch"] == arch and "fvcore" in res["convention"]
    rc, out, _ = cli(capsys, "flops", "--space", "digits-tiny", "--arch", json.dumps(arch), "--check-fvcore")
    assert rc == 0 and "agree" in out and "DISAGREE" not in out and f"{res['flops']:,}" in out


def test_flops_from_file_without_space(capsys, tmp_path):
    arch = _digits_arch(stage=1, seed=4)
    path = tmp_path / "arch.json"
    path.write_text(json.dumps(arch, indent=2))
    rc, out, err = cli(capsys, "flops", "--arch", str(path), "--json")
    assert rc == 0, err
    res = json.loads(out)
    assert res["flops"] == subnet_flops_params(load_space("digits-tiny"), parse_subnet(arch))[0]
    # an extrapolated member (multipliers >= 1 beyond the lists) is counted, and said to be outside
    arch.update(depth=1.9, width=1.8, resolution=32)
    rc, out, _ = cli(capsys, "flops", "--arch", json.dumps(arch))
    assert rc == 0 and "outside the space" in out


# ------------------------------------------------------------------------------------------ export
def test_export_fresh_and_from_supernet(capsys, tmp_path, tiny_supernet, tiny_ckpt):
    arch = _digits_arch(stage=2, seed=5)
    out_path = tmp_path / "fresh.pt"
    rc, out, err = cli(capsys, "export", "--arch", json.dumps(arch), "--out", out_path)
    assert rc == 0, err
    assert "load_model" in out
    model = load_model(out_path)
    sub = parse_subnet(arch)
    assert isinstance(model, StandaloneNet) and model.subnet == sub
    assert load_model_file(out_path)["flops"] == subnet_flops_params(load_space("digits-tiny"), sub)[0]
    # weights from a supernet checkpoint, side 1: the file reproduces the supernet's output
    out_path = tmp_path / "from_supernet.pt"
    rc, out, err = cli(capsys, "export", "--arch", json.dumps(arch), "--supernet", tiny_ckpt, "--side", "1",
                       "--out", out_path)
    assert rc == 0, err
    model = load_model(out_path).eval()
    x = torch.randn(3, 1, sub.resolution, sub.resolution)
    with torch.no_grad():
        assert (model(x) - tiny_supernet(x, sub, 1)).abs().max() <= 1e-5
        assert torch.equal(model(x), export_subnet(tiny_supernet, sub, 1).eval()(x))
    # the checkpoint's folder is accepted too
    rc, _, err = cli(capsys, "export", "--arch", json.dumps(arch), "--supernet", tiny_ckpt.parent,
                     "--out", tmp_path / "dir.pt")
    assert rc == 0, err


# ------------------------------------------------------------------------------------------ bad input
def _bad_cases(tmp: Path, ckpt: Path) -> list[tuple[list[str], list[str]]]:
    good = _digits_arch(stage=1, seed=9)
    unknown_op = dict(good, base=[["ir_k9"]] + good["base"][1:])
    too_deep = dict(good, base=[good["base"][0], ["ir_k3"] * 4] + good["base"][2:])
    too_narrow = dict(good, width=0.5)
    outside = dict(good, width=1.9)
    cifar = extreme_subnets(load_space("cifar-mbv3"), 0)[0].to_dict()
    corrupt = tmp / "corrupt.pt"
    corrupt.write_bytes(bytes(random.Random(1).randrange(256) for _ in range(2048)))
    j = json.dumps
    out = str(tmp / "never.pt")
    return [
        (["space", "show", "nope"], ["unknown search space 'nope'"]),
        (["sample", "--space", "nope"], ["unknown search space"]),
        (["sample", "--space", "digits-tiny", "--n", "0"], ["--n"]),
        (["sample", "--space", "digits-tiny", "--stage", "7"], ["--stage 7"]),
        (["sample", "--space", "digits-tiny", "--n", "two"], ["--n", "invalid int"]),
        (["sample", "--space", "digits-tiny", "--bogus"], ["unrecognized arguments: --bogus"]),
        (["frobnicate"], ["invalid choice"]),
        (["flops"], ["--arch"]),
        (["flops", "--arch", '{"space": "digits-tiny", "base": '], ["malformed JSON"]),
        (["flops", "--arch", str(tmp / "missing.json")], ["not found", "missing.json"]),
        (["flops", "--arch", j(unknown_op)], ["base[0][0]", "ir_k9"]),
        (["flops", "--arch", j(too_deep)], ["base[1]", "depth 4"]),
        (["flops", "--arch", j(too_narrow)], [">= 1.0"]),
        (["flops", "--space", "cifar-mbv3", "--arch", j(good)], ["'space'", "digits-tiny", "cifar-mbv3"]),
        (["flops", "--space", "nope", "--arch", j(good)], ["unknown search space"]),
        (["export", "--arch", j(unknown_op), "--out", out], ["ir_k9"]),
        (["export", "--arch", j(good), "--supernet", str(corrupt), "--out", out], ["corrupt"]),
        (["export", "--arch", j(good), "--supernet", str(tmp / "none.pt"), "--out", out], ["not found"]),
        (["export", "--arch", j(cifar), "--supernet", str(ckpt), "--out", out], ["digits-tiny", "cifar-mbv3"]),
        (["export", "--arch", j(outside), "--supernet", str(ckpt), "--out", out], ["outside"]),
        (["export", "--arch", j(good), "--supernet", str(ckpt), "--side", "2", "--out", out], ["--side"]),
    ]


def test_bad_inputs_are_one_line_exit_2(capsys, tmp_path, tiny_ckpt):
    for argv, words in _bad_cases(tmp_path, tiny_ckpt):
        rc, out, err = cli(capsys, *argv)
        try:
            assert_one_line_error(rc, err, *words)
        except AssertionError as exc:
            raise AssertionError(f"scalenas {' '.join(argv)}: {exc}") from None
        assert out == "", argv
    assert not (tmp_path / "never.pt").exists()
