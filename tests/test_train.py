"""Supernet training: only the path moves, sampling distributions, exact resume, seeds, outputs, CLI errors,
user data, SIGINT. Tiny budgets (a few steps of batch 32, 1 thread): these check mechanics, not accuracy."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from scipy.stats import chisquare

from scalenas.train.checkpoint import CKPT_NAME, read_checkpoint, save_checkpoint
from scalenas.cli.main import main
from scalenas.train.config import TrainConfig, load_job
from scalenas.train.optim import param_groups
from scalenas.spaces.space import load_space
from scalenas.models.supernet import SuperNet
from scalenas.train.supernet import PathSampler, train_supernet

REPO = Path(__file__).resolve().parents[1]
STEPS = 8
CUT = 3  # the interrupted run stops after this step


def tiny_cfg(**kw) -> TrainConfig:
    cfg = load_job("digits", {"steps": STEPS, "batch_size": 32, "threads": 1, "checkpoint_every": 2,
                              "device": "cpu"})
    # warm-up 2 so the few steps use a real learning rate; a small panel and calibration keep it fast.
    cfg.warmup_steps, cfg.log_every, cfg.panel_random, cfg.bn_calib_batches = 2, 2, 0, 1
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(torch.int32) if t.dtype == torch.float32 else t


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(bits(a[k]), bits(b[k])), f"{k} differs"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One uninterrupted run, one interrupted at step CUT (snapshot kept) and then resumed to the end."""
    threads = torch.get_num_threads()
    root = tmp_path_factory.mktemp("runs")
    cfg = tiny_cfg()
    full = train_supernet(cfg, root / "full", progress=False)
    part = train_supernet(cfg, root / "part", progress=False, stop_after=CUT)
    shutil.copytree(root / "part", root / "cut")
    resumed = train_supernet(tiny_cfg(), root / "part", resume=True, progress=False)
    yield {"root": root, "cfg": cfg, "full": full, "part": part, "resumed": resumed}
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------- path invariance
@pytest.mark.slow
def test_only_the_sampled_path_changes_in_a_real_step(runs):
    """Resume the step-CUT checkpoint for exactly one trainer step; every entry off that step's path (weights,
    BN statistics, momentum buffers) is bit-identical, including ops sampled in earlier steps."""
    root, cfg = runs["root"], runs["cfg"]
    shutil.copytree(root / "cut", root / "inv")
    before = read_checkpoint(root / "inv")
    train_supernet(tiny_cfg(), root / "inv", resume=True, progress=False, stop_after=CUT + 1)
    after = read_checkpoint(root / "inv")
    assert (before["step"], after["step"]) == (CUT, CUT + 1)

    space = load_space(cfg.space)
    sampler = PathSampler(space, cfg, cfg.seed)
    sampler.load(before["sampler"])
    _, subnets, side = sampler.draw()  # the draw the trainer made for step CUT + 1
    net = SuperNet(space)
    names = {id(p): n for n, p in net.named_parameters()}
    net.record = []
    with torch.no_grad():
        for sub in subnets:
            net(torch.zeros(2, space.in_channels, sub.resolution, sub.resolution), sub, side)
    on = {n: torch.zeros(p.shape, dtype=torch.bool) for n, p in net.named_parameters()}
    for p, slices in net.record:
        on[names[id(p)]][slices] = True

    def path_mask(key: str) -> torch.Tensor:
        if key in on:
            return on[key]
        owner, buf = key.rsplit(".", 1)
        assert buf in ("running_mean", "running_var"), key
        return on[f"{owner}.weight"]  # BN statistics follow the slice of their BN's weight

    changed = 0
    for key, old in before["model"].items():
        new, m = after["model"][key], path_mask(key)
        assert torch.equal(bits(old)[~m], bits(new)[~m]), f"{key}: an entry off the path changed"
        changed += int((bits(old)[m] != bits(new)[m]).sum())
    assert changed > 0

    # Momentum buffers: optimizer state is indexed in param_groups order.
    order = [names[id(p)] for g in param_groups(net, cfg.weight_decay) for p in g["params"]]
    st0, st1 = before["optimizer"]["state"], after["optimizer"]["state"]
    frozen_with_momentum = 0
    for idx, state in st1.items():
        name, buf1 = order[idx], state["momentum_buffer"]
        off = ~on[name]
        if idx in st0:
            buf0 = st0[idx]["momentum_buffer"]
            assert torch.equal(bits(buf0)[off], bits(buf1)[off]), f"{name}: momentum moved off the path"
            if off.all() and bool(buf0.abs().sum() > 0):
                frozen_with_momentum += 1
                assert torch.equal(bits(before["model"][name]), bits(after["model"][name]))
        else:
            assert not bool(buf1[off].any()), f"{name}: new momentum buffer is non-zero off the path"
    # The scenario the leak needs did occur: ops trained earlier (non-zero momentum) sat out this step.
    assert frozen_with_momentum > 0


# ------------------------------------------------------------------------------------------- sampling
def _stage_counts(cfg: TrainConfig, n: int, seed: int = 1) -> np.ndarray:
    space = load_space(cfg.space)
    sampler = PathSampler(space, cfg, seed)
    counts = Counter()
    for _ in range(n):
        stage, subs, side = sampler.draw()
        assert side in (0, 1)
        for sub in subs:
            assert space.stage_of(sub.depth, sub.width, sub.resolution) == stage
        counts[stage] += 1
    return np.array([counts[s] for s in range(len(space.scaling))], dtype=float)


def test_hierarchical_sampling_follows_stage_weights():
    space = load_space("digits-tiny")
    n = 6000
    obs = _stage_counts(TrainConfig(sampling="hierarchical"), n)
    w = np.array(space.stage_weights) / sum(space.stage_weights)
    assert chisquare(obs, w * n).pvalue > 1e-3
    sizes = np.array([sc.size for sc in space.scaling], dtype=float)
    assert chisquare(obs, sizes / sizes.sum() * n).pvalue < 1e-6  # the test can tell the two apart


def test_uniform_sampling_is_proportional_to_stage_triples():
    space = load_space("digits-tiny")
    n = 6000
    obs = _stage_counts(TrainConfig(sampling="uniform"), n, seed=2)
    sizes = np.array([sc.size for sc in space.scaling], dtype=float)
    assert chisquare(obs, sizes / sizes.sum() * n).pvalue > 1e-3
    w = np.array(space.stage_weights) / sum(space.stage_weights)
    assert chisquare(obs, w * n).pvalue < 1e-6


def test_d_w_r_uniform_within_a_stage():
    space = load_space("digits-tiny")
    sampler = PathSampler(space, TrainConfig(), 3)
    draws = [sampler.draw() for _ in range(4000)]
    s1 = [subs[0] for stage, subs, _ in draws if stage == 1]
    sc = space.scaling[1]
    for attr, options in (("depth", sc.depth), ("width", sc.width), ("resolution", sc.resolution)):
        c = Counter(getattr(s, attr) for s in s1)
        assert set(c) == set(options)
        assert chisquare([c[o] for o in options]).pvalue > 1e-3


def test_sandwich_draws_largest_smallest_random_of_one_stage():
    space = load_space("digits-tiny")
    sampler = PathSampler(space, TrainConfig(sandwich=True), 4)
    stages = set()
    for _ in range(200):
        stage, subs, side = sampler.draw()
        assert len(subs) == 3
        large, small, rand = subs
        sc = space.scaling[stage]
        assert (large.depth, large.width, large.resolution) == (max(sc.depth), max(sc.width), max(sc.resolution))
        assert (small.depth, small.width, small.resolution) == (min(sc.depth), min(sc.width), min(sc.resolution))
        assert space.stage_of(rand.depth, rand.width, rand.resolution) == stage
        for st, layers in zip(space.stages, large.base):  # the largest base: max layers, largest kernel
            assert len(layers) == st.max_layers
            assert {space.ops[o].kernel for o in layers} == {max(space.ops[o].kernel for o in st.ops)}
        stages.add(stage)
    assert stages == set(range(len(space.scaling)))


def test_sandwich_largest_random_gives_the_largest_multipliers_a_random_base():
    space = load_space("digits-tiny")
    sampler = PathSampler(space, TrainConfig(sandwich=True, sandwich_largest="random"), 4)
    bases = set()
    for _ in range(100):
        stage, (large, small, _), _ = sampler.draw()
        sc = space.scaling[stage]
        assert (large.depth, large.width, large.resolution) == (max(sc.depth), max(sc.width), max(sc.resolution))
        assert (small.depth, small.width, small.resolution) == (min(sc.depth), min(sc.width), min(sc.resolution))
        bases.add(large.base)
    assert len(bases) > 50  # a fresh base nearly every step, not the max-ops one


# ------------------------------------------------------------------------------------------- resume, seeds
def test_resume_equals_uninterrupted(runs):
    root = runs["root"]
    assert runs["part"]["finished"] is False and runs["part"]["step"] == CUT
    assert runs["resumed"]["finished"] is True and runs["full"]["finished"] is True
    a, b = read_checkpoint(root / "full"), read_checkpoint(root / "part")
    assert a["step"] == b["step"] == STEPS
    assert_same_state(a["model"], b["model"])
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(bits(sa[k]["momentum_buffer"]), bits(sb[k]["momentum_buffer"]))
    assert a["sampler"] == b["sampler"] and a["data"] == b["data"]
    pd.testing.assert_frame_equal(pd.read_csv(root / "full" / "panel.csv"), pd.read_csv(root / "part" / "panel.csv"))
    log_a, log_b = pd.read_csv(root / "full" / "train_log.csv"), pd.read_csv(root / "part" / "train_log.csv")
    assert log_a["step"].tolist() == log_b["step"].tolist() == [2, 4, 6, 8]
    assert log_a["lr"].tolist() == log_b["lr"].tolist()


def test_same_seed_same_weights_other_seed_differs(runs, tmp_path):
    cut = read_checkpoint(runs["root"] / "cut")
    train_supernet(tiny_cfg(), tmp_path / "again", progress=False, stop_after=CUT)
    assert_same_state(cut["model"], read_checkpoint(tmp_path / "again")["model"])
    train_supernet(tiny_cfg(seed=1), tmp_path / "seed1", progress=False, stop_after=CUT)
    other = read_checkpoint(tmp_path / "seed1")
    assert not torch.equal(cut["model"]["classifier.weight"], other["model"]["classifier.weight"])
    assert cut["sampler"] != other["sampler"]


# ------------------------------------------------------------------------------------------- outputs
def test_run_outputs(runs):
    out = runs["root"] / "full"
    for name in ("checkpoint.pt", "train_log.csv", "panel.csv", "config.yaml", "split.json"):
        assert (out / name).is_file(), name
    log = pd.read_csv(out / "train_log.csv")
    assert {"step", "epoch", "lr", "loss", "train_top1", "images_per_s", "stage", "resolution"} <= set(log.columns)
    assert np.isfinite(log["loss"]).all()
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved == runs["cfg"].to_dict()  # the resolved config, every key
    split = json.loads((out / "split.json").read_text())
    assert split["num_classes"] == 10 and sum(split["sizes"].values()) == 1797
    panel = pd.read_csv(out / "panel.csv")
    space = load_space("digits-tiny")
    want = {f"s{s}-{e}" for s in range(len(space.scaling)) for e in ("smallest", "largest")}
    assert set(panel["name"]) == want  # panel_random 0: exactly the extremes of every stage
    assert panel["holdout_top1"].between(0, 1).all()
    for _, row in panel.iterrows():
        sc = space.scaling[row["stage"]]
        pick = min if row["name"].endswith("smallest") else max
        assert (row["depth_mult"], row["width_mult"], row["resolution"]) == (pick(sc.depth), pick(sc.width),
                                                                            pick(sc.resolution))
    ck = read_checkpoint(out)
    assert ck["finished"] is True and ck["total_steps"] == STEPS and ck["space"] == "digits-tiny"


# ------------------------------------------------------------------------------------------- CLI errors
def _png_folder(root: Path, classes: int, per_class: int, size: int = 12) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        d = root / f"class{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 60, (size, size)).astype(np.uint8)
            img[:, c * 4:(c + 1) * 4] = 255  # a class-dependent bright band
            Image.fromarray(img, "L").save(d / f"{i}.png")
    return root


def _fail(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    rc = main(["train-supernet", "--no-progress", "--threads", "1", "--device", "cpu", *argv])
    err = capsys.readouterr().err
    assert rc == 2, (argv, err)
    assert err.count("\n") == 1 and err.startswith("scalenas"), err
    return err


def test_cli_bad_inputs_exit_2_with_one_line(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no results/runs/ here: "--resume" alone finds nothing
    assert "does not exist" in _fail(capsys, ["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o1")])
    (tmp_path / "empty").mkdir()
    assert "empty" in _fail(capsys, ["--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o2")])
    one = _png_folder(tmp_path / "one", classes=1, per_class=5)
    assert "one class" in _fail(capsys, ["--data", str(one), "--out", str(tmp_path / "o3")])
    assert "epochs" in _fail(capsys, ["--epochs", "0"])
    assert "epochs" in _fail(capsys, ["--epochs", "-1"])
    assert "steps" in _fail(capsys, ["--steps", "0"])
    assert "nothing to resume" in _fail(capsys, ["--resume", "--out", str(tmp_path / "empty")])
    assert "does not exist" in _fail(capsys, ["--resume", "--out", str(tmp_path / "nowhere")])
    assert "no run found" in _fail(capsys, ["--resume"])
    assert "job file not found" in _fail(capsys, ["--job", str(tmp_path / "nope.yaml")])
    job = tmp_path / "bad.yaml"
    job.write_text("steps: 4\nlearning_rate: 0.1\n")
    assert "learning_rate" in _fail(capsys, ["--job", str(job)])
    for name in ("o1", "o2", "o3"):
        assert not (tmp_path / name).exists()  # failed before writing anything


def test_failed_runs_never_touch_an_existing_checkpoint(runs, tmp_path, capsys):
    src = runs["root"] / "cut"

    def run_dir(name: str) -> Path:
        d = tmp_path / name
        shutil.copytree(src, d)
        return d

    def snapshot(d: Path) -> dict:
        return {str(p.relative_to(d)): p.read_bytes() for p in d.rglob("*") if p.is_file()}

    # A new run into a folder that holds a checkpoint.
    d = run_dir("existing")
    before = snapshot(d)
    assert "already holds a checkpoint" in _fail(capsys, ["--out", str(d), "--steps", "4"])
    assert snapshot(d) == before
    # A corrupt checkpoint.
    d = run_dir("corrupt")
    (d / CKPT_NAME).write_bytes(b"not a checkpoint at all")
    before = snapshot(d)
    assert "corrupt" in _fail(capsys, ["--resume", "--out", str(d)])
    assert snapshot(d) == before
    # The checkpoint of another space than the one asked for.
    d = run_dir("other")
    before = snapshot(d)
    assert "checkpoint of space" in _fail(capsys, ["--resume", "--out", str(d), "--space", "cifar-mbv3"])
    assert snapshot(d) == before
    # Weights that do not fit the space (e.g. the space file was edited after training).
    d = run_dir("misfit")
    payload = read_checkpoint(d)
    payload["model"]["stem_w"] = torch.zeros(3, 1, 3, 3)
    save_checkpoint(d / CKPT_NAME, payload)
    before = snapshot(d)
    assert "do not fit" in _fail(capsys, ["--resume", "--out", str(d)])
    assert snapshot(d) == before


def test_resume_without_space_flag_uses_the_runs_own_space(tmp_path, capsys):
    """A run on a non-default space resumes with the plain command the interruption message prints."""
    space = tmp_path / "alt.yaml"
    text = (REPO / "search_spaces" / "digits-tiny.yaml").read_text()
    space.write_text(text.replace("name: digits-tiny", "name: digits-alt"))
    out = tmp_path / "alt"
    threads = torch.get_num_threads()
    try:
        train_supernet(tiny_cfg(space=str(space), steps=2), out, progress=False, stop_after=1)
        assert "--resume --out" in capsys.readouterr().err
        job = tmp_path / "job.yaml"
        job.write_text("panel_random: 0\nbn_calib_batches: 1\n")
        # --job given: its (default) space must match the checkpoint's, otherwise one clear error.
        assert "checkpoint of space 'digits-alt'" in _fail(capsys, ["--resume", "--out", str(out), "--job", str(job)])
        assert main(["train-supernet", "--resume", "--out", str(out), "--no-progress"]) == 0
    finally:
        torch.set_num_threads(threads)
    ck = read_checkpoint(out)
    assert ck["space"] == "digits-alt" and ck["step"] == 2 and ck["finished"] is True


# ------------------------------------------------------------------------------------------- user data
def test_user_image_folder_trains_via_cli(tmp_path, capsys):
    data = _png_folder(tmp_path / "imgs", classes=3, per_class=20)
    out = tmp_path / "run"
    threads = torch.get_num_threads()
    try:
        rc = main(["train-supernet", "--data", str(data), "--steps", "4", "--batch-size", "16", "--out", str(out),
                   "--no-progress", "--threads", "1", "--device", "cpu"])
    finally:
        torch.set_num_threads(threads)
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "panel mean holdout top-1" in captured.out
    ck = read_checkpoint(out)
    assert ck["step"] == 4 and ck["num_classes"] == 3
    assert tuple(ck["model"]["classifier.weight"].shape)[0] == 3
    split = json.loads((out / "split.json").read_text())
    assert split["classes"] == ["class0", "class1", "class2"] and split["source"]["kind"] == "imagefolder"
    assert len(pd.read_csv(out / "panel.csv")) > 0


# ------------------------------------------------------------------------------------------- SIGINT
def _wait_for(cond, timeout: float, proc: subprocess.Popen) -> None:
    t0 = time.monotonic()
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"process ended early with {proc.returncode}: {proc.stderr.read()}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out waiting for the training process")
        time.sleep(0.2)


@pytest.mark.slow
def test_sigint_saves_checkpoint_and_resume_continues(tmp_path):
    out = tmp_path / "run"
    job = tmp_path / "job.yaml"
    job.write_text("log_every: 1\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    base = [sys.executable, "-m", "scalenas.cli", "train-supernet", "--job", str(job), "--no-progress",
            "--threads", "1", "--device", "cpu", "--batch-size", "32", "--checkpoint-every", "2", "--out", str(out)]
    proc = subprocess.Popen(base + ["--steps", "100000"], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (out / CKPT_NAME).is_file(), 180, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted at step" in err and "--resume --out" in err
    ck = read_checkpoint(out)
    first = int(ck["step"])
    assert first >= 2 and ck["finished"] is False and ck["total_steps"] == 100000

    # --steps given on resume: the run's saved recipe wins (the total stays 100000), and the run continues
    # from the saved step; interrupt it again once it has checkpointed further.
    proc = subprocess.Popen(base + ["--resume", "--steps", "5"], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    inode = (out / CKPT_NAME).stat().st_ino  # checkpoints are replaced atomically: a new file, a new inode
    _wait_for(lambda: (out / CKPT_NAME).stat().st_ino != inode, 180, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    ck = read_checkpoint(out)
    assert ck["step"] > first and ck["total_steps"] == 100000 and ck["config"]["steps"] == 100000
    assert yaml.safe_load((out / "config.yaml").read_text())["steps"] == 100000
    log = pd.read_csv(out / "train_log.csv")
    assert log["step"].tolist() == list(range(1, ck["step"] + 1))  # one row per step, none lost or repeated


def test_default_recipe_same_seed_same_weights(tmp_path):
    """The default job's recipe (animals, flips and shifts, sandwich rule, in-place distillation) is
    reproducible on the CPU: two runs with the same seed end bit-identical, weights and sampler."""
    def cfg() -> TrainConfig:
        c = load_job("animals", {"steps": 2, "batch_size": 8, "threads": 1, "checkpoint_every": 2,
                                 "device": "cpu"})
        c.warmup_steps, c.log_every, c.panel_random, c.bn_calib_batches = 1, 1, 0, 1
        c.holdout_frac = c.test_frac = 0.02  # a 200-image panel: this checks bits, not accuracy
        return c
    first = cfg()
    assert first.sandwich and first.inplace_distill and first.augment == "auto"
    train_supernet(first, tmp_path / "a", progress=False)
    train_supernet(cfg(), tmp_path / "b", progress=False)
    a, b = read_checkpoint(tmp_path / "a"), read_checkpoint(tmp_path / "b")
    assert_same_state(a["model"], b["model"])
    assert a["sampler"] == b["sampler"] and a["data"] == b["data"]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "a" / "panel.csv"), pd.read_csv(tmp_path / "b" / "panel.csv"))


def test_cudnn_is_off_for_supernets_and_on_for_fixed_models_on_cuda():
    """configure_cudnn: auto turns cuDNN off where shapes change per step (a supernet) and on for a fixed model;
    on/off force it; a CPU device never touches the flag. The flag is process-wide, so it is restored here."""
    import torch

    from scalenas.train.loop import configure_cudnn

    before = torch.backends.cudnn.enabled
    cuda = torch.device("cuda")  # setting the flag needs no GPU
    try:
        assert configure_cudnn(cuda, "auto", dynamic_shapes=True) is False and not torch.backends.cudnn.enabled
        assert configure_cudnn(cuda, "auto", dynamic_shapes=False) is True and torch.backends.cudnn.enabled
        assert configure_cudnn(cuda, "off", dynamic_shapes=False) is False and not torch.backends.cudnn.enabled
        assert configure_cudnn(cuda, "on", dynamic_shapes=True) is True and torch.backends.cudnn.enabled
        torch.backends.cudnn.enabled = True
        assert configure_cudnn(torch.device("cpu"), "off") is False and torch.backends.cudnn.enabled
        with pytest.raises(ValueError):
            configure_cudnn(cuda, "sometimes")
    finally:
        torch.backends.cudnn.enabled = before
