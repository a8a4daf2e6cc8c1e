"""Reliability (issue 13): bad numbers and architectures, failed writes, resumes that change nothing, log rows
kept in the checkpoint, damaged inputs and one writer per folder.

Every refused command must end in exit code 2 with exactly one line on stderr (no traceback), must not create or
change a file in the folders it was pointed at, and must leave no temp file behind. Runs are tiny (a few steps
of batch 32 on the embedded digits, one thread); the search is one generation of three candidates.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

import scalenas.io as sio
from scalenas.cli.main import main
from scalenas.errors import ScalenasError
from scalenas.io import LOCK_NAME, atomic_torch_save, atomic_write_text, folder_lock, remove_stale_temps
from scalenas.spaces.arch import ARCH_LIMIT, arch_limits, parse_subnet
from scalenas.spaces.space import load_space
from scalenas.train.checkpoint import read_checkpoint, save_checkpoint
from scalenas.train.config import load_job
from scalenas.train.standalone import TRAIN_CKPT_NAME, train_standalone
from scalenas.train.supernet import train_supernet

pytestmark = pytest.mark.usefixtures("torch_threads")

SPACE = load_space("digits-tiny")
SMALL = {"space": "digits-tiny", "base": [["ir_k3"], ["ir_k3"], ["ir_k3"], ["ir_k3"]], "depth": 1.0, "width": 1.0,
         "resolution": 16}
STEPS = 4
TARGET = "4M"
SEARCH = ["--target-flops", TARGET, "--generations", "1", "--population", "3", "--elites", "2", "--workers", "0",
          "--calib-batches", "1", "--no-progress"]
TRAIN = ["--batch-size", "32", "--threads", "1", "--device", "cpu", "--no-progress"]


# ------------------------------------------------------------------------------------------ helpers
def cli(capsys, *argv) -> tuple[int, str, str]:
    """``scalenas ARGV`` in-process: (exit code, stdout, stderr); argparse's own exits become exit codes."""
    capsys.readouterr()
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:
        rc = int(exc.code)
    out, err = capsys.readouterr()
    return rc, out, err


def refused(capsys, *argv, words: tuple[str, ...] = ()) -> str:
    """Run a command that must be refused: exit 2, exactly one stderr line, no traceback; returns the line."""
    rc, _, err = cli(capsys, *argv)
    assert rc == 2, (argv, err)
    assert err.endswith("\n") and err.count("\n") == 1, (argv, err)
    assert "Traceback" not in err and err.startswith("scalenas"), (argv, err)
    for w in words:
        assert w in err, (argv, err)
    return err.strip()


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``root`` with its bytes and mtime (a rewritten file counts as changed)."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def leftovers(root: Path) -> list[str]:
    """Temp files and lock files left anywhere under ``root``."""
    return [str(p) for p in root.rglob("*") if sio.is_temp_file(p) or p.name == LOCK_NAME]


def tiny_cfg(**kw):
    cfg = load_job("digits", {"steps": STEPS, "batch_size": 32, "threads": 1, "checkpoint_every": 2,
                              "device": "cpu"})
    cfg.warmup_steps, cfg.log_every, cfg.panel_random, cfg.bn_calib_batches = 1, 1, 0, 1
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def sa_cfg(**kw):
    over = {"steps": 3, "batch_size": 32, "threads": 1, "log_every": 1, "checkpoint_every": 1, "data_seed": 0,
            "device": "cpu"}
    over.update(kw)
    return load_job("digits", over)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("reliability")


@pytest.fixture(scope="module")
def finished_run(root) -> Path:
    """A finished supernet run (STEPS steps) holding a finished search in RUN/search."""
    run = root / "run"
    train_supernet(tiny_cfg(), run, progress=False)
    assert main(["search", "--run", str(run), *SEARCH]) == 0
    assert (run / "search" / "best.json").is_file()
    return run


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    """A private copy of the finished run (tests may damage it)."""
    dst = tmp_path / "run"
    shutil.copytree(finished_run, dst)
    return dst


@pytest.fixture(scope="module")
def standalone_run(root) -> Path:
    out = root / "standalone"
    summary = train_standalone(sa_cfg(), json.dumps(SMALL), None, out, progress=False)
    assert summary["finished"]
    return out


def make_readonly(folder: Path, monkeypatch) -> None:
    """Make ``folder`` refuse new files: chmod 555, and, for root (whom permissions do not stop), the temp-file
    creation in it fails with the error a read-only folder gives (EACCES)."""
    folder.chmod(0o555)
    if os.geteuid() != 0:
        return
    real = sio.tempfile.mkstemp

    def mkstemp(*args, dir=None, **kw):  # noqa: A002
        if dir is not None and Path(dir).resolve() == folder.resolve():
            raise PermissionError(errno.EACCES, "Permission denied", str(dir))
        return real(*args, dir=dir, **kw)

    monkeypatch.setattr(sio.tempfile, "mkstemp", mkstemp)


# ------------------------------------------------------------------------------------------ item 3: numbers
BAD_NUMBERS = [
    (["demo", "--steps", "0"], "--steps"),
    (["demo", "--steps", "-1"], "--steps"),
    (["demo", "--workers", "-1"], "--workers"),
    (["demo", "--threads", "0"], "--threads"),
    (["demo", "--threads", "-1"], "--threads"),
    (["demo", "--seed", str(2**64)], "--seed"),
    (["extrapolate", "--steps", "0"], "--steps"),
    (["extrapolate", "--steps", "21"], "--steps"),
    (["extrapolate", "--steps", "1000"], "--steps"),
    (["extrapolate", "--steps", "2", "--growth", "nan"], "--growth"),
    (["extrapolate", "--steps", "2", "--growth", "inf"], "--growth"),
    (["extrapolate", "--steps", "2", "--growth", "1"], "--growth"),
    (["extrapolate", "--steps", "2", "--growth", "1e6"], "--growth"),
    (["extrapolate", "--steps", "2", "--tolerance", "nan"], "--tolerance"),
    (["extrapolate", "--steps", "2", "--tolerance", "0"], "--tolerance"),
    (["extrapolate", "--steps", "2", "--tolerance", "1"], "--tolerance"),
    (["search", *SEARCH, "--stages", "0"], "--stages"),
    (["search", *SEARCH, "--growth", "nan"], "--growth"),
    (["search", *SEARCH, "--growth", "-inf"], "--growth"),
    (["search", *SEARCH, "--growth", "1"], "--growth"),
    (["search", *SEARCH, "--stage-weights", "nan,1,1,1"], "--stage-weights"),
    (["search", *SEARCH, "--stage-weights", "0,1,-1,1"], "--stage-weights"),
    (["grow", "--model", "m.pt", "--out", "g.pt", "--depth", "2x", "--rank", "0"], "--rank"),
    (["grow", "--model", "m.pt", "--out", "g.pt", "--depth", "2x", "--rank", "100000000"], "--rank"),
    (["grow", "--model", "m.pt", "--out", "g.pt", "--depth", "2x", "--scale", "nan"], "--scale"),
    (["grow", "--model", "m.pt", "--out", "g.pt", "--depth", "2x", "--scale", "inf"], "--scale"),
    (["grow", "--model", "m.pt", "--out", "g.pt", "--depth", "1000000000"], "--depth"),
    (["grow", "--model", "m.pt", "--out", "g.pt", "--depth", "1e9x"], "--depth"),
    (["grow", "--model", "m.pt", "--out", "g.pt", "--depth", "nanx"], "--depth"),
    (["grow", "--model", "m.pt", "--out", "g.pt", "--depth", "1x"], "--depth"),
    (["sample", "--space", "digits-tiny", "--n", "0"], "--n"),
    (["sample", "--space", "digits-tiny", "--n", "1000000000"], "--n"),
    (["sample", "--space", "digits-tiny", "--stage", "-1"], "--stage"),
    (["sample", "--space", "digits-tiny", "--stage", "9"], "--stage"),
    (["sample", "--space", "digits-tiny", "--seed", str(2**64)], "--seed"),
    (["train-supernet", "--lr", "nan"], "--lr"),
    (["train-supernet", "--threads", "0"], "--threads"),
    (["train", "--arch", json.dumps(SMALL), "--lr", "inf"], "--lr"),
]


@pytest.mark.parametrize("argv, flag", BAD_NUMBERS, ids=[" ".join(a[:1] + a[-2:]) for a, _ in BAD_NUMBERS])
def test_bad_numbers_are_refused_at_parse_time(argv, flag, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # nothing may appear here (no results/runs/, no output file)
    t0 = time.perf_counter()
    refused(capsys, *argv, words=(flag,))
    assert time.perf_counter() - t0 < 20  # refused before any work
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_calib_batches_zero_and_negative_are_refused(finished_run, capsys):
    before = snapshot(finished_run)
    for value in ("0", "-3"):
        args = list(SEARCH)
        args[args.index("--calib-batches") + 1] = value
        refused(capsys, "search", "--run", finished_run, *args, "--out", finished_run / "cb",
                words=("--calib-batches", ">= 1"))
    assert snapshot(finished_run) == before and not (finished_run / "cb").exists()


# ------------------------------------------------------------------------------------------ item 4: architectures
def _arch(**fields) -> str:
    return json.dumps({**SMALL, **fields}, allow_nan=True)


BAD_ARCHS = [
    (dict(depth=float("nan")), ("'depth'", "finite")),
    (dict(depth=float("inf")), ("'depth'", "finite")),
    (dict(width=float("-inf")), ("'width'", "finite")),
    (dict(width=float("nan")), ("'width'", "finite")),
    (dict(resolution=float("nan")), ("'resolution'", "finite")),
    (dict(resolution=float("inf")), ("'resolution'", "finite")),
    (dict(depth=1e9), ("'depth'", f"{ARCH_LIMIT}x")),
    (dict(width=1e9), ("'width'", f"{ARCH_LIMIT}x")),
    (dict(resolution=10**9), ("'resolution'", f"{ARCH_LIMIT}x")),
    (dict(depth=10**400), ("'depth'", f"{ARCH_LIMIT}x")),
]


@pytest.mark.parametrize("fields, words", BAD_ARCHS, ids=[str(list(f.items())[0])[:40] for f, _ in BAD_ARCHS])
def test_bad_architectures_one_line_before_any_allocation(fields, words, tmp_path, capsys):
    arch = _arch(**fields)
    (tmp_path / "a.json").write_text(arch)
    t0 = time.perf_counter()
    refused(capsys, "flops", "--arch", arch, words=words)
    refused(capsys, "flops", "--arch", tmp_path / "a.json", words=words)
    refused(capsys, "export", "--arch", arch, "--out", tmp_path / "m.pt", words=words)
    refused(capsys, "train", "--arch", arch, "--out", tmp_path / "t", "--steps", "1", *TRAIN, words=words)
    assert time.perf_counter() - t0 < 30
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_missing_multipliers_are_the_documented_base_values():
    """docs/method.md: a missing depth / width / resolution is the base network's (1.0, 1.0, base resolution)."""
    sub = parse_subnet({"space": "digits-tiny", "base": SMALL["base"]})
    assert (sub.depth, sub.width, sub.resolution) == (1.0, 1.0, SPACE.base_resolution)


def test_architecture_bound_is_16x_the_largest_options():
    lim = arch_limits(SPACE)
    assert lim == {"depth": ARCH_LIMIT * SPACE.max_depth_mult, "width": ARCH_LIMIT * SPACE.max_width_mult,
                   "resolution": ARCH_LIMIT * max(SPACE.all_resolutions)}
    at = parse_subnet({**SMALL, "depth": lim["depth"], "width": 2.0, "resolution": 32}, SPACE, allow_outside=True)
    assert at.depth == lim["depth"]  # the bound itself is admitted (not built here)
    with pytest.raises(ScalenasError, match="at most"):
        parse_subnet({**SMALL, "depth": lim["depth"] * 1.001}, SPACE, allow_outside=True)
    with pytest.raises(ScalenasError, match="at most"):
        parse_subnet({**SMALL, "resolution": int(lim["resolution"]) + 1}, SPACE, allow_outside=True)


def test_huge_json_integer_is_one_line(capsys):
    refused(capsys, "flops", "--arch", '{"space": "digits-tiny", "depth": ' + "9" * 5000 + "}",
            words=("malformed JSON",))


@pytest.mark.slow
def test_extrapolation_is_bounded(finished_run, tmp_path, capsys):
    from scalenas.search.extrapolate import MAX_STEPS, extrapolate

    search = tmp_path / "search"
    shutil.copytree(finished_run / "search", search)
    before = snapshot(search)
    refused(capsys, "extrapolate", "--run", search, "--steps", str(MAX_STEPS + 1), words=("--steps", "20"))
    t0 = time.perf_counter()  # members beyond the architecture bounds are refused, not computed
    refused(capsys, "extrapolate", "--run", search, "--steps", "20", "--growth", "100",
            words=("architecture bounds", f"{ARCH_LIMIT}x"))
    assert time.perf_counter() - t0 < 30
    assert snapshot(search) == before and leftovers(search) == []
    chain = [(max(sc.depth), max(sc.width), max(sc.resolution)) for sc in SPACE.scaling[1:]]
    with pytest.raises(ScalenasError, match="from 1 to 20"):
        extrapolate(SPACE, SMALL["base"], chain, 21)
    members = extrapolate(SPACE, SMALL["base"], chain, 3)
    lim = arch_limits(SPACE)
    for m in members:  # what extrapolate writes reads back
        sub = parse_subnet(json.loads(m["arch"]), SPACE, allow_outside=True)
        assert sub.depth <= lim["depth"] and sub.width <= lim["width"] and sub.resolution <= lim["resolution"]


# ------------------------------------------------------------------------------------------ item 5: writes
def test_failed_writes_are_one_line(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    a_dir = tmp_path / "a_dir"
    a_dir.mkdir()
    before = snapshot(tmp_path)
    arch = json.dumps(SMALL)
    refused(capsys, "export", "--arch", arch, "--out", a_dir, words=(str(a_dir), "cannot write", "folder"))
    refused(capsys, "export", "--arch", arch, "--out", a_file / "m.pt", words=("cannot write", "is a file"))
    refused(capsys, "train-supernet", "--out", a_file, "--steps", "1", *TRAIN, words=(str(a_file), "cannot create"))
    refused(capsys, "train-supernet", "--out", a_file / "run", "--steps", "1", *TRAIN, words=("is a file",))
    refused(capsys, "train", "--arch", arch, "--out", a_file / "run", "--steps", "1", *TRAIN, words=("is a file",))
    refused(capsys, "demo", "--quick", "--out", a_file / "demo", words=("is a file",))
    assert snapshot(tmp_path) == before and leftovers(tmp_path) == []


@pytest.mark.slow
def test_failed_writes_of_a_search_are_one_line(finished_run, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    a_dir = tmp_path / "a_dir"
    a_dir.mkdir()
    before, run_before = snapshot(tmp_path), snapshot(finished_run)
    refused(capsys, "export", "--arch", json.dumps(SMALL), "--supernet", finished_run / "checkpoint.pt",
            "--out", a_dir, words=("cannot write",))
    refused(capsys, "search", "--run", finished_run, *SEARCH, "--out", a_file, words=("cannot create",))
    refused(capsys, "search", "--run", finished_run, *SEARCH, "--out", a_file / "s", words=("is a file",))
    assert snapshot(tmp_path) == before and leftovers(tmp_path) == []
    assert snapshot(finished_run) == run_before


def test_read_only_folders_are_one_line(tmp_path, monkeypatch, capsys):
    from scalenas.models.registry import save_model
    from scalenas.models.vit import ViT

    save_model(tmp_path / "vit.pt", ViT(image_size=8, patch_size=4, in_channels=1, num_classes=10, dim=16, depth=2,
                                        heads=2))
    ro = tmp_path / "readonly"
    ro.mkdir()
    make_readonly(ro, monkeypatch)
    try:
        refused(capsys, "grow", "--model", tmp_path / "vit.pt", "--depth", "2x", "--out", ro / "x.pt",
                words=(str(ro / "x.pt"), "cannot write", "Permission denied"))
        refused(capsys, "export", "--arch", json.dumps(SMALL), "--out", ro / "m.pt", words=("Permission denied",))
    finally:
        ro.chmod(0o755)
    assert list(ro.iterdir()) == []


@pytest.mark.slow
def test_read_only_search_folder_is_one_line(finished_run, tmp_path, monkeypatch, capsys):
    search = tmp_path / "search"
    shutil.copytree(finished_run / "search", search)
    before = snapshot(search)
    make_readonly(search, monkeypatch)
    try:
        refused(capsys, "report", search, words=("cannot write", "Permission denied"))
        refused(capsys, "extrapolate", "--run", search, "--steps", "1", words=("cannot write", "Permission denied"))
    finally:
        search.chmod(0o755)
    assert snapshot(search) == before and leftovers(search) == []


@pytest.mark.parametrize("how", ["OSError", "RuntimeError while handling it"])
def test_full_disk_is_one_line_and_leaves_no_temp(tmp_path, monkeypatch, how):
    def full(obj, fh, *a, **k):
        fh.write(b"partial")
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        finally:
            if how != "OSError":  # what torch.save's zip writer does on a full disk
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(ScalenasError, match=r"x\.pt: cannot write \(No space left on device\)"):
        atomic_torch_save(tmp_path / "x.pt", {"a": 1})
    assert list(tmp_path.iterdir()) == []


def test_remove_stale_temps_removes_only_temp_files(tmp_path):
    keep = ["checkpoint.pt", "x.tmp", ".lock", ".hidden", "train_log.csv"]
    gone = [".checkpoint.pt.a1b2c3.tmp", ".train_log.csv.zz_9.tmp"]
    for name in keep + gone:
        (tmp_path / name).write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".state.json.q.tmp").write_text("x")  # another folder's own business
    removed = remove_stale_temps(tmp_path)
    assert sorted(p.name for p in removed) == sorted(gone)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep + ["sub"])
    assert (tmp_path / "sub" / ".state.json.q.tmp").exists()


@pytest.mark.slow
def test_stale_temps_are_removed_on_resume(tmp_path, capsys):
    run = tmp_path / "run"
    train_supernet(tiny_cfg(), run, progress=False, stop_after=2)
    capsys.readouterr()
    stale = run / ".checkpoint.pt.k1ll3d.tmp"
    stale.write_bytes(b"half a checkpoint")
    assert main(["train-supernet", "--resume", "--out", str(run), "--no-progress"]) == 0
    assert not stale.exists() and leftovers(run) == []

    sa = tmp_path / "sa"
    train_standalone(sa_cfg(), json.dumps(SMALL), None, sa, progress=False, stop_after=1)
    stale = sa / f".{TRAIN_CKPT_NAME}.x.tmp"
    stale.write_bytes(b"x")
    assert main(["train", "--resume", "--out", str(sa), "--no-progress"]) == 0
    assert not stale.exists() and leftovers(sa) == []


@pytest.mark.slow
def test_stale_temps_are_removed_when_a_search_starts(finished_run, tmp_path, capsys):
    out = tmp_path / "s"
    out.mkdir()
    stale = out / ".state.json.dead.tmp"
    stale.write_text("{")
    assert main(["search", "--run", str(finished_run), *SEARCH, "--out", str(out)]) == 0
    assert not stale.exists() and leftovers(out) == []


# ------------------------------------------------------------------------------------------ item 6: resumes
@pytest.mark.slow
def test_refused_search_resume_changes_nothing(run_copy, capsys):
    search = run_copy / "search"
    before = snapshot(run_copy)
    refused(capsys, "search", "--run", run_copy, *[a if a != TARGET else "3.8M" for a in SEARCH], "--resume",
            "--out", search, words=("cannot resume", "targets"))
    refused(capsys, "search", "--run", run_copy, *SEARCH, "--strategy", "random", "--resume", "--out", search,
            words=("cannot resume", "strategy"))
    assert snapshot(run_copy) == before  # search_config.json still agrees with state.json
    state = json.loads((search / "state.json").read_text())
    del state["cache"]
    (search / "state.json").write_text(json.dumps(state))
    before = snapshot(run_copy)
    refused(capsys, "search", "--run", run_copy, *SEARCH, "--resume", "--out", search, words=("damaged",))
    assert snapshot(run_copy) == before and leftovers(run_copy) == []


@pytest.mark.slow
def test_resume_of_a_finished_search_changes_nothing(run_copy, capsys):
    before = snapshot(run_copy)
    rc, out, err = cli(capsys, "search", "--run", run_copy, *SEARCH, "--resume", "--out", run_copy / "search")
    assert rc == 0 and "already finished" in out, err
    assert snapshot(run_copy) == before and leftovers(run_copy) == []
    state = run_copy / "search" / "state.json"  # reports older than the state (a kill between): written again
    os.utime(state, ns=(time.time_ns(), time.time_ns() + 10**9))
    rc, out, err = cli(capsys, "search", "--run", run_copy, *SEARCH, "--resume", "--out", run_copy / "search")
    assert rc == 0 and "already finished" not in out, err
    best = (run_copy / "search" / "best.json").read_bytes()
    assert best == before["search/best.json"][0]


@pytest.mark.slow
def test_supernet_resume_of_a_finished_run_changes_nothing(run_copy, capsys):
    before = snapshot(run_copy)
    for extra in ([], ["--steps", str(STEPS)], ["--steps", "2"]):
        rc, out, err = cli(capsys, "train-supernet", "--resume", "--out", run_copy, "--no-progress", *extra)
        assert rc == 0, err
        assert "already finished" in out and f"{STEPS}/{STEPS}" in out
    assert snapshot(run_copy) == before and leftovers(run_copy) == []


@pytest.mark.slow
def test_supernet_resume_with_a_larger_steps_extends_the_run(run_copy, capsys):
    rc, out, err = cli(capsys, "train-supernet", "--resume", "--out", run_copy, "--no-progress",
                       "--steps", str(STEPS + 2))
    assert rc == 0, err
    ck = read_checkpoint(run_copy)
    assert ck["step"] == ck["total_steps"] == STEPS + 2 and ck["finished"] is True
    assert yaml.safe_load((run_copy / "config.yaml").read_text())["steps"] == STEPS + 2
    log = pd.read_csv(run_copy / "train_log.csv")
    assert log["step"].tolist() == list(range(1, STEPS + 3))


@pytest.mark.slow
def test_unfinished_supernet_resume_keeps_the_saved_total(tmp_path, capsys):
    run = tmp_path / "run"
    train_supernet(tiny_cfg(), run, progress=False, stop_after=2)
    assert main(["train-supernet", "--resume", "--out", str(run), "--no-progress", "--steps", "3"]) == 0
    ck = read_checkpoint(run)
    assert ck["step"] == ck["total_steps"] == STEPS  # a smaller --steps does not cut the run short


def test_standalone_resume_of_a_finished_run_changes_nothing(standalone_run, tmp_path, capsys):
    run = tmp_path / "sa"
    shutil.copytree(standalone_run, run)
    before = snapshot(run)
    rc, out, err = cli(capsys, "train", "--resume", "--out", run, "--no-progress")
    assert rc == 0 and "already finished" in out, err
    assert snapshot(run) == before and leftovers(run) == []
    rc, out, err = cli(capsys, "train", "--resume", "--out", run, "--no-progress", "--steps", "5")
    assert rc == 0, err
    ck = torch.load(run / TRAIN_CKPT_NAME, weights_only=True)
    assert ck["step"] == ck["total_steps"] == 5
    assert json.loads((run / "result.json").read_text())["steps"] == 5


# ------------------------------------------------------------------------------------------ item 7: log rows
@pytest.mark.parametrize("kill_at", [2, 3], ids=["mid-run checkpoint", "final checkpoint"])
@pytest.mark.slow
def test_log_rows_survive_a_kill_between_checkpoint_and_log(tmp_path, monkeypatch, kill_at):
    """Checkpoints at steps 2, 4 and 6 (the last one final); the process dies right after checkpoint
    ``kill_at`` was written, before its log write. The resume rebuilds train_log.csv from the checkpoint."""
    import scalenas.train.loop as loop

    steps = 6
    full = tmp_path / "full"
    train_supernet(tiny_cfg(steps=steps), full, progress=False)
    run = tmp_path / "killed"
    real, calls = loop.write_log, {"n": 0}

    def killed(out_dir, rows):
        calls["n"] += 1
        if calls["n"] == kill_at:
            raise KeyboardInterrupt
        real(out_dir, rows)

    monkeypatch.setattr(loop, "write_log", killed)
    with pytest.raises(KeyboardInterrupt):
        train_supernet(tiny_cfg(steps=steps), run, progress=False)
    monkeypatch.setattr(loop, "write_log", real)
    ck = read_checkpoint(run)
    assert ck["step"] == 2 * kill_at and [r["step"] for r in ck["log_rows"]] == list(range(1, 2 * kill_at + 1))
    lost = pd.read_csv(run / "train_log.csv")["step"].tolist()
    assert lost == list(range(1, 2 * kill_at - 1))  # the log write was lost
    train_supernet(tiny_cfg(steps=steps), run, resume=True, progress=False)
    a, b = pd.read_csv(full / "train_log.csv"), pd.read_csv(run / "train_log.csv")
    assert b["step"].tolist() == list(range(1, steps + 1))
    assert a["lr"].tolist() == b["lr"].tolist() and a["loss"].tolist() == b["loss"].tolist()
    assert [r["step"] for r in read_checkpoint(run)["log_rows"]] == b["step"].tolist()
    assert (run / "panel.csv").is_file() and (run / "run_summary.json").is_file()  # the cut end is completed
    assert leftovers(run) == []


# ------------------------------------------------------------------------------------------ item 8: damaged inputs
def _damaged_standalone(standalone_run: Path, tmp_path: Path, name: str, damage) -> Path:
    run = tmp_path / name
    shutil.copytree(standalone_run, run)
    payload = torch.load(run / TRAIN_CKPT_NAME, weights_only=True)
    payload["finished"], payload["step"] = False, 1  # an unfinished run: resume must rebuild the model
    damage(payload)
    atomic_torch_save(run / TRAIN_CKPT_NAME, payload)
    return run


@pytest.mark.parametrize("name, damage, word", [
    ("no-kind", lambda p: p.pop("model_kind"), "model_kind"),
    ("bad-kind", lambda p: p.__setitem__("model_kind", "resnet"), "unknown model kind"),
    ("bad-config", lambda p: p.__setitem__("model_config", {"nonsense": 1}), "model_config"),
    ("config-not-dict", lambda p: p.__setitem__("model_config", [1, 2]), "model_config"),
    ("bad-shape", lambda p: p["model"].__setitem__(next(k for k, v in p["model"].items() if v.ndim == 4),
                                                   torch.zeros(1, 1, 1, 1)), "do not fit"),
    ("bad-step", lambda p: p.__setitem__("step", "three"), "step"),
    ("bad-log", lambda p: p.__setitem__("log_rows", "rows"), "log_rows"),
])
def test_damaged_standalone_checkpoint_is_one_line(standalone_run, tmp_path, capsys, name, damage, word):
    run = _damaged_standalone(standalone_run, tmp_path, name, damage)
    before = snapshot(run)
    refused(capsys, "train", "--resume", "--out", run, "--no-progress", words=(word,))
    assert snapshot(run) == before and leftovers(run) == []


@pytest.mark.parametrize("name, text, word", [
    ("empty", "", "empty"),
    ("header-only", "stage,kind,flops,params,resolution,depth_mult,width_mult,top1,arch\n", "no members"),
    ("garbage", "\x00\x01\x02 not, a\n\"csv", "malformed"),
    ("ragged", "stage,flops\n1,2,3,4,5\n", "malformed"),
    ("missing-columns", "stage,kind\n0,searched\n", "missing"),
    ("not-numbers", "stage,kind,flops,params,resolution,depth_mult,width_mult\n0,searched,lots,1,16,1,1\n",
     "flops"),
    ("empty-cell", "stage,kind,flops,params,resolution,depth_mult,width_mult\n0,searched,,1,16,1,1\n", "row 1"),
])
@pytest.mark.slow
def test_malformed_family_csv_is_one_line(finished_run, tmp_path, capsys, name, text, word):
    search = tmp_path / "search"
    shutil.copytree(finished_run / "search", search)
    (search / "family.csv").write_text(text)
    before = snapshot(search)
    refused(capsys, "report", search, words=("family.csv", word))
    refused(capsys, "extrapolate", "--run", search, "--steps", "1", words=("family.csv",))
    assert snapshot(search) == before and leftovers(search) == []


def test_export_refuses_a_supernet_of_another_space_with_a_shipped_name(tmp_path, capsys):
    from scalenas.models.supernet import SuperNet
    from scalenas.spaces.space import space_from_dict

    raw = dict(SPACE.raw)
    raw["head"] = {**raw["head"], "channels": int(raw["head"]["channels"]) + 8}  # same name, other shapes
    other = space_from_dict(raw, "edited")
    assert other.name == SPACE.name and other.content_key != SPACE.content_key
    ckpt = tmp_path / "ck" / "checkpoint.pt"
    save_checkpoint(ckpt, {"space": other.name, "space_yaml": other.raw, "space_path": "edited",
                           "model": SuperNet(other).state_dict(), "config": {}})
    refused(capsys, "export", "--arch", json.dumps(SMALL), "--supernet", ckpt, "--out", tmp_path / "m.pt",
            words=("differs",))
    assert not (tmp_path / "m.pt").exists() and leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------ item 9: one writer
def _hold_lock(folder: Path) -> subprocess.Popen:
    """Another process that holds ``folder``'s lock until killed."""
    code = ("import sys, time; from scalenas.io import folder_lock\n"
            "with folder_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.slow
def test_a_second_writer_of_a_folder_is_refused(finished_run, standalone_run, tmp_path, capsys):
    out = tmp_path / "s"
    holder = _hold_lock(out)
    try:
        err = refused(capsys, "search", "--run", finished_run, *SEARCH, "--out", out,
                      words=(str(out), f"pid {holder.pid}"))
        assert "another scalenas process" in err
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # the holder's; nothing else written
    finally:
        holder.kill()
        holder.wait()
    assert (out / LOCK_NAME).exists()  # a killed holder leaves its file; the kernel released the lock
    assert main(["search", "--run", str(finished_run), *SEARCH, "--out", str(out)]) == 0
    assert leftovers(out) == []

    run = tmp_path / "sa"
    shutil.copytree(standalone_run, run)
    with folder_lock(run):
        refused(capsys, "train", "--resume", "--out", run, "--no-progress", "--steps", "9",
                words=(str(run), f"pid {os.getpid()}"))
        sn = tmp_path / "sn"
        with folder_lock(sn):
            refused(capsys, "train-supernet", "--out", sn, "--steps", "1", *TRAIN, words=(str(sn),))
    assert leftovers(tmp_path) == []


def test_folder_lock_removes_what_it_created_when_nothing_was_written(tmp_path):
    target = tmp_path / "a" / "b"
    with folder_lock(target):
        assert (target / LOCK_NAME).is_file()
    assert not (tmp_path / "a").exists()
    with folder_lock(target):
        atomic_write_text(target / "x.txt", "x")
    assert sorted(p.name for p in target.iterdir()) == ["x.txt"]
