"""The bad-input table (issue 13): every command, refused in one line, nothing written.

One parametrised test, one row per bad input. A row is ``(id, argv, expected, watch)``:

* ``argv``: the ``scalenas`` arguments; a word starting with ``@`` names a shared fixture path (``@run`` is the
  tiny trained supernet run, ``@run/checkpoint.pt`` a file in it, ``@cwd`` the test's working folder, ...);
  inline JSON words start with ``{`` and are passed as they are;
* ``expected``: a substring of the one stderr line (case-sensitive);
* ``watch``: the folder the command would write into (same ``@`` syntax); its files (paths, bytes and mtimes)
  must be the same after the command.

Each row asserts: exit code 2 from :func:`scalenas.cli.main.main`, exactly one line on stderr, no
``Traceback``, nothing new or changed in the watched folder (nor anywhere under the shared fixtures, by size and
mtime, nor in the working folder) and no ``*.tmp`` file left anywhere there.

The shared fixtures are built once per module: a 3-step supernet run, a one-generation search of it (target from
:func:`scalenas.spaces.targets.reachable_target`), a copy of the search with one extrapolated member, a fresh
standalone model file (``scalenas export``), a 2-step standalone training run, and damaged copies of them.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest
import torch

from scalenas.cli.main import main
from scalenas.io import LOCK_NAME, is_temp_file

SMALL = {"space": "digits-tiny", "base": [["ir_k3"], ["ir_k3"], ["ir_k3"], ["ir_k3"]], "depth": 1.0, "width": 1.0,
         "resolution": 16}


def arch(**fields) -> str:
    """SMALL with ``fields`` replaced (``None`` drops the key); NaN/Infinity written as Python's JSON does."""
    obj = {**SMALL, **fields}
    return json.dumps({k: v for k, v in obj.items() if v is not None}, allow_nan=True)


A = arch()
POP = ["--population", "4", "--generations", "1", "--elites", "2", "--workers", "0", "--calib-batches", "1",
       "--no-progress"]
TS = ["--steps", "1", "--batch-size", "16", "--threads", "1", "--device", "cpu", "--no-progress"]  # train(-supernet)
TARGET = "@target"  # replaced by the search's target (FLOPs of the top stage)
OTHER_TARGET = "@other_target"  # a different reachable target: a resume with it must be refused


# ------------------------------------------------------------------------------------------ the table
def row(id_, argv, expected, watch="@cwd", xfail=None):
    marks = [pytest.mark.xfail(strict=True, reason=xfail)] if xfail else []
    return pytest.param(list(argv), expected, watch, id=id_, marks=marks)


ROWS = [
    # ---------------------------------------------------------------- space show / list
    row("space-show-unknown", ["space", "show", "no-such-space"], "no-such-space"),
    row("space-show-missing-yaml", ["space", "show", "@cwd/missing.yaml"], "missing.yaml"),
    row("space-show-malformed-yaml", ["space", "show", "@bad/malformed.yaml"], "malformed.yaml", "@bad"),
    row("space-show-yaml-not-a-space", ["space", "show", "@bad/list.yaml"], "list.yaml", "@bad"),
    row("space-show-folder", ["space", "show", "@bad"], "bad", "@bad"),
    row("space-unknown-action", ["space", "remove"], "invalid choice"),
    row("space-list-extra-arg", ["space", "list", "extra"], "unrecognized arguments"),
    # ---------------------------------------------------------------- sample
    row("sample-unknown-space", ["sample", "--space", "no-such-space"], "no-such-space"),
    row("sample-n-0", ["sample", "--space", "digits-tiny", "--n", "0"], "--n"),
    row("sample-n-word", ["sample", "--space", "digits-tiny", "--n", "two"], "--n"),
    row("sample-n-huge", ["sample", "--space", "digits-tiny", "--n", "1e9"], "--n"),
    row("sample-stage-9", ["sample", "--space", "digits-tiny", "--stage", "9"], "--stage"),
    row("sample-seed-2**64", ["sample", "--space", "digits-tiny", "--seed", str(2**64)], "--seed"),
    row("sample-no-space", ["sample"], "--space"),
    # ---------------------------------------------------------------- flops
    row("flops-depth-nan", ["flops", "--arch", arch(depth=float("nan"))], "'depth'"),
    row("flops-depth-inf", ["flops", "--arch", arch(depth=float("inf"))], "'depth'"),
    row("flops-depth-1e9", ["flops", "--arch", arch(depth=1e9)], "'depth'"),
    row("flops-width-nan", ["flops", "--arch", arch(width=float("nan"))], "'width'"),
    row("flops-resolution-1e9", ["flops", "--arch", arch(resolution=10**9)], "'resolution'"),
    row("flops-depth-negative", ["flops", "--arch", arch(depth=-1.0)], "depth"),
    row("flops-depth-string", ["flops", "--arch", arch(depth="deep")], "depth"),
    row("flops-depth-nan-file", ["flops", "--arch", "@bad/nan.json"], "'depth'", "@bad"),
    row("flops-malformed-json", ["flops", "--arch", '{"space": "digits-tiny", "base": ['], "malformed JSON"),
    row("flops-json-list", ["flops", "--arch", "@bad/list.json"], "list.json", "@bad"),
    row("flops-arch-missing-file", ["flops", "--arch", "@cwd/nope.json"], "not found"),
    row("flops-unknown-space-in-json", ["flops", "--arch", arch(space="no-such-space")], "no-such-space"),
    row("flops-unknown-op", ["flops", "--arch", arch(base=[["ir_k9"], ["ir_k3"], ["ir_k3"], ["ir_k3"]])], "ir_k9"),
    row("flops-base-too-few-stages", ["flops", "--arch", arch(base=[["ir_k3"]])], "stage"),
    row("flops-base-too-many-layers", ["flops", "--arch", arch(base=[["ir_k3"] * 50, ["ir_k3"], ["ir_k3"],
                                                                     ["ir_k3"]])], "depth 50"),
    row("flops-unknown---space", ["flops", "--space", "no-such-space", "--arch", A], "no-such-space"),
    # ---------------------------------------------------------------- export
    row("export-out-is-a-folder", ["export", "--arch", A, "--out", "@bad/a_dir"], "folder", "@bad"),
    row("export-out-under-a-file", ["export", "--arch", A, "--out", "@bad/a_file/m.pt"], "is a file", "@bad"),
    row("export-depth-1e9", ["export", "--arch", arch(depth=1e9), "--out", "@cwd/m.pt"], "'depth'"),
    row("export-depth-infinity", ["export", "--arch", arch(depth=float("inf")), "--out", "@cwd/m.pt"], "'depth'"),
    row("export-unknown-format", ["export", "--arch", A, "--format", "zip", "--out", "@cwd/m.zip"],
        "invalid choice"),
    row("export-arch-as-onnx", ["export", "--arch", A, "--format", "onnx", "--out", "@cwd/m.onnx"], "--format onnx"),
    row("export-arch-and-model", ["export", "--arch", A, "--model", "@model/m.pt", "--out", "@cwd/m.pt"], "not both"),
    row("export-neither", ["export", "--out", "@cwd/m.pt"], "--arch"),
    row("export-model-as-pt", ["export", "--model", "@model/m.pt", "--format", "pt", "--out", "@cwd/x.pt"],
        "--format onnx", "@model"),
    row("export-model-missing", ["export", "--model", "@cwd/none.pt", "--out", "@cwd/x.onnx"], "not found"),
    row("export-side-2", ["export", "--arch", A, "--side", "2", "--out", "@cwd/m.pt"], "--side"),
    row("export-supernet-missing", ["export", "--arch", A, "--supernet", "@cwd/none.pt", "--out", "@cwd/m.pt"],
        "not found"),
    row("export-supernet-garbage", ["export", "--arch", A, "--supernet", "@bad/garbage/checkpoint.pt",
                                    "--out", "@cwd/m.pt"], "corrupt", "@bad/garbage"),
    row("export-supernet-lacks-model", ["export", "--arch", A, "--supernet", "@bad/no_model/checkpoint.pt",
                                        "--out", "@cwd/m.pt"], "'model'", "@bad/no_model"),
    row("export-supernet-wrong-shape", ["export", "--arch", A, "--supernet", "@bad/wrong_shape/checkpoint.pt",
                                        "--out", "@cwd/m.pt"], "do not fit", "@bad/wrong_shape"),
    row("export-supernet-is-a-model-file", ["export", "--arch", A, "--supernet", "@model/m.pt",
                                            "--out", "@cwd/m.pt"], "not a scalenas supernet", "@model"),
    row("export-member-outside-supernet", ["export", "--arch", "@extrap/member_s4.json", "--supernet",
                                           "@run/checkpoint.pt", "--out", "@cwd/m.pt"], "outside", "@run"),
    # ---------------------------------------------------------------- train-supernet
    row("train-supernet-lr-nan", ["train-supernet", "--lr", "nan", *TS, "--out", "@cwd/r"], "--lr"),
    row("train-supernet-lr-inf", ["train-supernet", "--lr", "inf", *TS, "--out", "@cwd/r"], "--lr"),
    row("train-supernet-lr-negative", ["train-supernet", "--lr", "-0.1", *TS, "--out", "@cwd/r"], "--lr"),
    row("train-supernet-threads-0", ["train-supernet", *TS, "--threads", "0", "--out", "@cwd/r"], "--threads"),
    row("train-supernet-threads--1", ["train-supernet", *TS, "--threads", "-1", "--out", "@cwd/r"], "--threads"),
    row("train-supernet-steps-0", ["train-supernet", *TS, "--steps", "0", "--out", "@cwd/r"], "--steps"),
    row("train-supernet-batch-0", ["train-supernet", *TS, "--batch-size", "0", "--out", "@cwd/r"], "--batch-size"),
    row("train-supernet-momentum-1", ["train-supernet", *TS, "--momentum", "1", "--out", "@cwd/r"], "--momentum"),
    row("train-supernet-smoothing-nan", ["train-supernet", *TS, "--label-smoothing", "nan", "--out", "@cwd/r"],
        "--label-smoothing"),
    row("train-supernet-weight-decay-inf", ["train-supernet", *TS, "--weight-decay", "inf", "--out", "@cwd/r"],
        "--weight-decay"),
    row("train-supernet-bn-calib-0", ["train-supernet", *TS, "--bn-calib-batches", "0", "--out", "@cwd/r"],
        "--bn-calib-batches"),
    row("train-supernet-unknown-optimizer", ["train-supernet", *TS, "--optimizer", "adam", "--out", "@cwd/r"],
        "invalid choice"),
    row("train-supernet-unknown-space", ["train-supernet", *TS, "--space", "no-such-space", "--out", "@cwd/r"],
        "no-such-space"),
    row("train-supernet-unknown-job", ["train-supernet", *TS, "--job", "no-such-job", "--out", "@cwd/r"],
        "no-such-job"),
    row("train-supernet-job-lr-nan", ["train-supernet", "--job", "@bad/lr_nan.yaml", *TS, "--out", "@cwd/r"],
        "lr", "@bad"),
    row("train-supernet-job-unknown-key", ["train-supernet", "--job", "@bad/unknown_key.yaml", *TS,
                                           "--out", "@cwd/r"], "learning_rate", "@bad"),
    row("train-supernet-data-missing", ["train-supernet", *TS, "--data", "@cwd/no-data", "--out", "@cwd/r"],
        "no-data"),
    row("train-supernet-out-is-a-file", ["train-supernet", *TS, "--out", "@bad/a_file"], "a_file", "@bad"),
    row("train-supernet-out-under-a-file", ["train-supernet", *TS, "--out", "@bad/a_file/run"], "is a file",
        "@bad"),
    row("train-supernet-resume-missing", ["train-supernet", "--resume", "--out", "@cwd/none", "--no-progress"],
        "does not exist"),
    row("train-supernet-resume-no-checkpoint", ["train-supernet", "--resume", "--out", "@bad/a_dir",
                                                "--no-progress"], "not found", "@bad/a_dir"),
    row("train-supernet-resume-lacks-model", ["train-supernet", "--resume", "--out", "@bad/no_model",
                                              "--no-progress"], "'model'", "@bad/no_model"),
    row("train-supernet-resume-lacks-optimizer", ["train-supernet", "--resume", "--out", "@bad/no_optimizer",
                                                  "--no-progress"], "optimizer", "@bad/no_optimizer"),
    row("train-supernet-resume-wrong-shape", ["train-supernet", "--resume", "--out", "@bad/wrong_shape",
                                              "--no-progress"], "do not fit", "@bad/wrong_shape"),
    row("train-supernet-resume-bad-step", ["train-supernet", "--resume", "--out", "@bad/bad_step",
                                           "--no-progress"], "step", "@bad/bad_step"),
    row("train-supernet-resume-other-space", ["train-supernet", "--resume", "--out", "@run", "--space",
                                              "cifar-mbv3", "--no-progress"], "space", "@run"),
    row("train-supernet-resume-lr-nan", ["train-supernet", "--resume", "--out", "@run", "--lr", "nan",
                                         "--no-progress"], "--lr", "@run"),
    # ---------------------------------------------------------------- train
    row("train-depth-nan", ["train", "--arch", arch(depth=float("nan")), *TS, "--out", "@cwd/t"], "'depth'"),
    row("train-depth-1e9", ["train", "--arch", arch(depth=1e9), *TS, "--out", "@cwd/t"], "'depth'"),
    row("train-width-infinity", ["train", "--arch", arch(width=float("inf")), *TS, "--out", "@cwd/t"], "'width'"),
    row("train-lr-inf", ["train", "--arch", A, *TS, "--lr", "inf", "--out", "@cwd/t"], "--lr"),
    row("train-lr-nan", ["train", "--arch", A, *TS, "--lr", "nan", "--out", "@cwd/t"], "--lr"),
    row("train-threads-0", ["train", "--arch", A, *TS, "--threads", "0", "--out", "@cwd/t"], "--threads"),
    row("train-threads--1", ["train", "--arch", A, *TS, "--threads", "-1", "--out", "@cwd/t"], "--threads"),
    row("train-dropout-1", ["train", "--arch", A, *TS, "--dropout", "1", "--out", "@cwd/t"], "--dropout"),
    row("train-no-arch", ["train", *TS, "--out", "@cwd/t"], "--arch"),
    row("train-unknown-model-kind", ["train", "--arch", "resnet", *TS, "--out", "@cwd/t"], "resnet"),
    row("train-grow-without-family", ["train", "--arch", A, "--grow", *TS, "--out", "@cwd/t"], "--family"),
    row("train-init-unknown", ["train", "--arch", A, "--init", "pretrained", *TS, "--out", "@cwd/t"], "pretrained"),
    row("train-init-supernet-missing", ["train", "--arch", A, "--init", "supernet:@cwd/none", *TS,
                                        "--out", "@cwd/t"], "none"),
    row("train-member-outside-supernet", ["train", "--arch", "@extrap/member_s4.json", "--init",
                                          "supernet:@run", *TS, "--out", "@cwd/t"], "outside", "@run"),
    row("train-out-under-a-file", ["train", "--arch", A, *TS, "--out", "@bad/a_file/t"], "is a file", "@bad"),
    row("train-resume-missing", ["train", "--resume", "--out", "@cwd/none", "--no-progress"], "does not exist"),
    row("train-resume-lacks-model-kind", ["train", "--resume", "--out", "@bad/sa_no_kind", "--no-progress"],
        "model_kind", "@bad/sa_no_kind"),
    row("train-resume-unknown-model-kind", ["train", "--resume", "--out", "@bad/sa_bad_kind", "--no-progress"],
        "unknown model kind", "@bad/sa_bad_kind"),
    row("train-resume-wrong-shape", ["train", "--resume", "--out", "@bad/sa_wrong_shape", "--no-progress"],
        "do not fit", "@bad/sa_wrong_shape"),
    row("train-arch-model-lacks-state-dict", ["train", "--arch", "@bad/no_state_dict.pt", *TS, "--out", "@cwd/t"],
        "state_dict", "@bad"),
    row("train-family-missing", ["train", "--family", "@cwd/none", *TS], "none"),
    row("train-family-empty-csv", ["train", "--family", "@bad/fam_empty", *TS], "family.csv", "@bad/fam_empty"),
    # ---------------------------------------------------------------- search
    row("search-calib-batches-0", ["search", "--run", "@run", "--target-flops", TARGET, *POP, "--calib-batches",
                                   "0", "--out", "@cwd/s"], "--calib-batches"),
    row("search-calib-batches--3", ["search", "--run", "@run", "--target-flops", TARGET, *POP, "--calib-batches",
                                    "-3", "--out", "@cwd/s"], "--calib-batches"),
    row("search-unknown-strategy", ["search", "--run", "@run", "--target-flops", TARGET, *POP, "--strategy",
                                    "annealing", "--out", "@cwd/s"], "invalid choice"),
    row("search-target-word", ["search", "--run", "@run", "--target-flops", "lots", *POP, "--out", "@cwd/s"],
        "lots", "@run"),
    row("search-target-0", ["search", "--run", "@run", "--target-flops", "0", *POP, "--out", "@cwd/s"],
        "positive", "@run"),
    row("search-target-unreachable", ["search", "--run", "@run", "--target-flops", "1T", *POP, "--out", "@cwd/s"],
        "1T", "@run"),
    row("search-population-0", ["search", "--run", "@run", "--target-flops", TARGET, *POP, "--population", "0",
                                "--out", "@cwd/s"], "--population"),
    row("search-stage-weights-nan", ["search", "--run", "@run", "--target-flops", TARGET, *POP,
                                     "--stage-weights", "nan,1,1,1", "--out", "@cwd/s"], "--stage-weights"),
    row("search-stage-weights-count", ["search", "--run", "@run", "--target-flops", TARGET, *POP,
                                       "--stage-weights", "1,1", "--out", "@cwd/s"], "weights", "@run"),
    row("search-stages-9", ["search", "--run", "@run", "--target-flops", TARGET, *POP, "--stages", "9",
                            "--out", "@cwd/s"], "--stages", "@run"),
    row("search-tolerance-1", ["search", "--run", "@run", "--target-flops", TARGET, *POP, "--flops-tolerance",
                               "1", "--out", "@cwd/s"], "--flops-tolerance"),
    row("search-workers--1", ["search", "--run", "@run", "--target-flops", TARGET, *POP, "--workers", "-1",
                              "--out", "@cwd/s"], "--workers"),
    row("search-unknown-device", ["search", "--run", "@run", "--target-flops", TARGET, *POP, "--device", "tpu",
                                  "--out", "@cwd/s"], "invalid choice"),
    row("search-run-missing", ["search", "--run", "@cwd/none", "--target-flops", TARGET, *POP], "none"),
    row("search-supernet-lacks-space-yaml", ["search", "--supernet", "@bad/no_space_yaml/checkpoint.pt",
                                             "--target-flops", TARGET, *POP, "--out", "@cwd/s"], "'space_yaml'",
        "@bad/no_space_yaml"),
    row("search-supernet-wrong-shape", ["search", "--supernet", "@bad/wrong_shape/checkpoint.pt",
                                        "--target-flops", TARGET, *POP, "--out", "@cwd/s"], "do not fit",
        "@bad/wrong_shape"),
    row("search-out-is-a-file", ["search", "--run", "@run", "--target-flops", TARGET, *POP, "--out",
                                 "@bad/a_file"], "a_file", "@bad"),
    row("search-out-under-a-file", ["search", "--run", "@run", "--target-flops", TARGET, *POP, "--out",
                                    "@bad/a_file/s"], "is a file", "@bad"),
    row("search-finished-out-no-force", ["search", "--run", "@run", "--target-flops", TARGET, *POP, "--out",
                                         "@search"], "already holds a search", "@search"),
    row("search-resume-other-targets", ["search", "--run", "@run", "--target-flops", OTHER_TARGET, *POP,
                                        "--resume", "--out", "@search"], "cannot resume", "@search"),
    row("search-resume-other-strategy", ["search", "--run", "@run", "--target-flops", TARGET, *POP, "--strategy",
                                         "random", "--resume", "--out", "@search"], "strategy", "@search"),
    row("search-resume-no-state", ["search", "--run", "@run", "--target-flops", TARGET, *POP, "--resume",
                                   "--out", "@bad/a_dir"], "cannot resume", "@bad/a_dir"),
    # ---------------------------------------------------------------- extrapolate
    row("extrapolate-steps-1000", ["extrapolate", "--run", "@extrap", "--steps", "1000"], "--steps", "@extrap"),
    row("extrapolate-steps-0", ["extrapolate", "--run", "@extrap", "--steps", "0"], "--steps", "@extrap"),
    row("extrapolate-growth-nan", ["extrapolate", "--run", "@extrap", "--steps", "1", "--growth", "nan"],
        "--growth", "@extrap"),
    row("extrapolate-tolerance-0", ["extrapolate", "--run", "@extrap", "--steps", "1", "--tolerance", "0"],
        "--tolerance", "@extrap"),
    row("extrapolate-run-missing", ["extrapolate", "--run", "@cwd/none", "--steps", "1"], "not a directory"),
    row("extrapolate-run-without-search", ["extrapolate", "--run", "@bad/a_dir", "--steps", "1"],
        "no finished search", "@bad/a_dir"),
    row("extrapolate-empty-family", ["extrapolate", "--run", "@bad/fam_empty", "--steps", "1"], "family.csv",
        "@bad/fam_empty"),
    row("extrapolate-malformed-family", ["extrapolate", "--run", "@bad/fam_garbage", "--steps", "1"],
        "family.csv", "@bad/fam_garbage"),
    row("extrapolate-garbage-best-json", ["extrapolate", "--run", "@bad/best_garbage", "--steps", "1"],
        "best.json", "@bad/best_garbage"),
    row("extrapolate-out-of-bounds", ["extrapolate", "--run", "@extrap", "--steps", "20", "--growth", "100"],
        "architecture bounds", "@extrap"),
    # ---------------------------------------------------------------- report
    row("report-missing", ["report", "@cwd/none"], "none"),
    row("report-unknown-format", ["report", "@extrap", "--format", "xml"], "invalid choice", "@extrap"),
    row("report-empty-family", ["report", "@bad/fam_empty"], "empty", "@bad/fam_empty"),
    row("report-malformed-family", ["report", "@bad/fam_garbage"], "malformed", "@bad/fam_garbage"),
    row("report-header-only-family", ["report", "@bad/fam_header"], "no members", "@bad/fam_header"),
    row("report-family-missing-columns", ["report", "@bad/fam_columns"], "missing", "@bad/fam_columns"),
    row("report-run-without-search", ["report", "@bad/a_dir"], "no finished search", "@bad/a_dir"),
    # ---------------------------------------------------------------- grow
    row("grow-model-missing", ["grow", "--model", "@cwd/none.pt", "--depth", "2x", "--out", "@cwd/g.pt"],
        "not found"),
    row("grow-depth-1x", ["grow", "--model", "@model/m.pt", "--depth", "1x", "--out", "@cwd/g.pt"], "--depth",
        "@model"),
    row("grow-depth-1e9x", ["grow", "--model", "@model/m.pt", "--depth", "1e9x", "--out", "@cwd/g.pt"], "--depth",
        "@model"),
    row("grow-rank-0", ["grow", "--model", "@model/m.pt", "--depth", "2x", "--rank", "0", "--out", "@cwd/g.pt"],
        "--rank", "@model"),
    row("grow-scale-nan", ["grow", "--model", "@model/m.pt", "--depth", "2x", "--scale", "nan", "--out",
                           "@cwd/g.pt"], "--scale", "@model"),
    row("grow-unknown-adapter", ["grow", "--model", "@model/m.pt", "--depth", "2x", "--adapter", "huge", "--out",
                                 "@cwd/g.pt"], "invalid choice", "@model"),
    row("grow-out-is-a-folder", ["grow", "--model", "@model/m.pt", "--depth", "2x", "--out", "@bad/a_dir"],
        "folder", "@bad"),
    row("grow-out-under-a-file", ["grow", "--model", "@model/m.pt", "--depth", "2x", "--out", "@bad/a_file/g.pt"],
        "is a file", "@bad"),
    row("grow-model-is-a-supernet", ["grow", "--model", "@run/checkpoint.pt", "--depth", "2x", "--out",
                                     "@cwd/g.pt"], "not a scalenas model file", "@run"),
    row("grow-model-garbage", ["grow", "--model", "@bad/garbage/checkpoint.pt", "--depth", "2x", "--out",
                               "@cwd/g.pt"], "corrupt", "@bad/garbage"),
    row("grow-model-unknown-kind", ["grow", "--model", "@bad/unknown_kind.pt", "--depth", "2x", "--out",
                                    "@cwd/g.pt"], "unknown model kind", "@bad"),
    row("grow-model-lacks-state-dict", ["grow", "--model", "@bad/no_state_dict.pt", "--depth", "2x", "--out",
                                        "@cwd/g.pt"], "state_dict", "@bad"),
    row("grow-model-wrong-shape", ["grow", "--model", "@bad/model_wrong_shape.pt", "--depth", "2x", "--out",
                                   "@cwd/g.pt"], "do not fit", "@bad"),
    row("grow-to-other-base", ["grow", "--model", "@model/m.pt", "--to", "@extrap/member_s4.json", "--out",
                               "@cwd/g.pt"], "base", "@extrap"),
    row("grow-no-depth-no-to", ["grow", "--model", "@model/m.pt", "--out", "@cwd/g.pt"], "--depth", "@model"),
    # ---------------------------------------------------------------- demo
    row("demo-steps-0", ["demo", "--steps", "0", "--out", "@cwd/d"], "--steps"),
    row("demo-threads-0", ["demo", "--threads", "0", "--out", "@cwd/d"], "--threads"),
    row("demo-threads--1", ["demo", "--threads", "-1", "--out", "@cwd/d"], "--threads"),
    row("demo-workers--1", ["demo", "--workers", "-1", "--out", "@cwd/d"], "--workers"),
    row("demo-out-is-a-file", ["demo", "--quick", "--out", "@bad/a_file"], "a_file", "@bad"),
    row("demo-out-under-a-file", ["demo", "--quick", "--out", "@bad/a_file/demo"], "is a file", "@bad"),
    row("demo-out-holds-a-run", ["demo", "--quick", "--out", "@run"], "already holds a run", "@run"),
    # ---------------------------------------------------------------- no command
    row("unknown-command", ["serve"], "invalid choice"),
]


# ------------------------------------------------------------------------------------------ fixtures
def _damage_supernet(src: Path, dst: Path, damage) -> None:
    dst.mkdir(parents=True)
    payload = torch.load(src, weights_only=True)
    payload["finished"] = False  # an unfinished run: --resume must restore it, not call it finished
    damage(payload)
    torch.save(payload, dst / "checkpoint.pt")


def _first_conv(state: dict) -> str:
    return next(k for k, v in state.items() if v.ndim == 4)


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, Path | str]:
    from scalenas.spaces.space import load_space
    from scalenas.spaces.targets import reachable_target

    root = tmp_path_factory.mktemp("bad_inputs")
    before = Path.cwd()
    os.chdir(root)  # the default results/runs/ of a command would land here, not in the repository
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run, search, extrap, model, sa = (root / n for n in ("run", "search", "extrap", "model", "sa"))
        assert main(["train-supernet", "--steps", "3", "--batch-size", "16", "--panel-random", "0", "--threads",
                     "1", "--device", "cpu", "--out", str(run), "--no-progress"]) == 0
        target = reachable_target(load_space("digits-tiny"))
        assert main(["search", "--run", str(run), "--target-flops", str(target), *POP, "--out", str(search)]) == 0
        shutil.copytree(search, extrap)
        assert main(["extrapolate", "--run", str(extrap), "--steps", "1"]) == 0
        assert (extrap / "member_s4.json").is_file()
        assert main(["export", "--arch", A, "--out", str(model / "m.pt")]) == 0
        assert main(["train", "--arch", A, "--steps", "2", "--batch-size", "16", "--threads", "1", "--device", "cpu",
                     "--out", str(sa), "--no-progress"]) == 0
        bad = _make_bad(root / "bad", run, search, model, sa)
    finally:
        os.chdir(before)
        torch.set_num_threads(torch_threads)
    return {"root": root, "run": run, "search": search, "extrap": extrap, "model": model, "sa": sa, "bad": bad,
            "target": str(target), "other_target": str(int(target * 0.9))}


def _make_bad(bad: Path, run: Path, search: Path, model: Path, sa: Path) -> Path:
    bad.mkdir()
    (bad / "a_file").write_text("not a folder\n")
    (bad / "a_dir").mkdir()
    (bad / "malformed.yaml").write_text("name: [unclosed\n  stages: {\n")
    (bad / "list.yaml").write_text("- 1\n- 2\n")
    (bad / "nan.json").write_text(arch(depth=float("nan")))
    (bad / "list.json").write_text("[1, 2, 3]")
    (bad / "lr_nan.yaml").write_text("space: digits-tiny\ndata: digits\nlr: .nan\n")
    (bad / "unknown_key.yaml").write_text("space: digits-tiny\ndata: digits\nlearning_rate: 0.1\n")

    ck = run / "checkpoint.pt"
    (bad / "garbage").mkdir()
    (bad / "garbage" / "checkpoint.pt").write_bytes(b"\x00not a zip file, not a pickle" * 100)
    _damage_supernet(ck, bad / "no_model", lambda p: p.pop("model"))
    _damage_supernet(ck, bad / "no_space_yaml", lambda p: p.pop("space_yaml"))
    _damage_supernet(ck, bad / "no_optimizer", lambda p: p.pop("optimizer"))
    _damage_supernet(ck, bad / "bad_step", lambda p: p.__setitem__("step", "three"))
    _damage_supernet(ck, bad / "wrong_shape",
                     lambda p: p["model"].__setitem__(_first_conv(p["model"]), torch.zeros(1, 1, 1, 1)))

    sa_ck = torch.load(sa / "train_checkpoint.pt", weights_only=True)
    for name, damage in (("sa_no_kind", lambda p: p.pop("model_kind")),
                         ("sa_bad_kind", lambda p: p.__setitem__("model_kind", "resnet")),
                         ("sa_wrong_shape", lambda p: p["model"].__setitem__(_first_conv(p["model"]),
                                                                             torch.zeros(1, 1, 1, 1)))):
        shutil.copytree(sa, bad / name)
        payload = {**sa_ck, "model": dict(sa_ck["model"]), "finished": False, "step": 1}
        damage(payload)
        torch.save(payload, bad / name / "train_checkpoint.pt")

    mf = torch.load(model / "m.pt", weights_only=True)
    torch.save({**mf, "kind": "resnet"}, bad / "unknown_kind.pt")
    torch.save({k: v for k, v in mf.items() if k != "state_dict"}, bad / "no_state_dict.pt")
    sd = dict(mf["state_dict"])
    sd[_first_conv(sd)] = torch.zeros(1, 1, 1, 1)
    torch.save({**mf, "state_dict": sd}, bad / "model_wrong_shape.pt")

    for name, text in (("fam_empty", ""), ("fam_garbage", "\x00\x01\x02 not, a\n\"csv"),
                       ("fam_header", "stage,kind,flops,params,resolution,depth_mult,width_mult,top1,arch\n"),
                       ("fam_columns", "stage,kind\n0,searched\n")):
        shutil.copytree(search, bad / name)
        (bad / name / "family.csv").write_text(text)
    shutil.copytree(search, bad / "best_garbage")
    (bad / "best_garbage" / "best.json").write_text("{not json")
    return bad


# ------------------------------------------------------------------------------------------ helpers
def resolve(word: str, paths: dict, cwd: Path) -> str:
    m = re.fullmatch(r"(.*?)@(\w+)(.*)", word)  # "@run/x", "supernet:@run"
    if m is None or word.startswith("{"):
        return word
    prefix, key, rest = m.groups()
    base = cwd if key == "cwd" else paths[key]
    return f"{prefix}{base}{rest}"


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder``: bytes and mtime (a rewritten file counts as changed)."""
    if not folder.exists():
        return {}
    if folder.is_file():
        return {folder.name: (folder.read_bytes(), folder.stat().st_mtime_ns)}
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def stat_snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``folder`` (files and folders) with size and mtime: cheap, for the whole fixture tree."""
    return {str(p.relative_to(folder)): (p.stat().st_size if p.is_file() else -1,
                                         p.stat().st_mtime_ns if p.is_file() else 0)
            for p in sorted(folder.rglob("*"))}


def leftovers(*folders: Path) -> list[str]:
    return [str(p) for f in folders for p in f.rglob("*")
            if p.name.endswith(".tmp") or is_temp_file(p) or p.name == LOCK_NAME]


# ------------------------------------------------------------------------------------------ the test
@pytest.mark.parametrize("argv, expected, watch", ROWS)
def test_bad_input_is_one_line_and_writes_nothing(argv, expected, watch, paths, tmp_path, monkeypatch, capfd):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # a default output folder (results/runs/...) would appear here
    threads = torch.get_num_threads()
    args = [resolve(a, paths, cwd) for a in argv]
    watched = Path(resolve(watch, paths, cwd))
    root = paths["root"]
    before, tree_before = snapshot(watched), stat_snapshot(root)
    capfd.readouterr()
    t0 = time.perf_counter()
    try:
        try:
            rc = main(args)
        except SystemExit as exc:  # argparse's own errors (OneLineParser: one line, exit 2)
            rc = exc.code
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - t0
    out, err = capfd.readouterr()
    assert "Traceback" not in err and "Traceback" not in out, err
    assert rc == 2, (rc, err)
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("scalenas"), err
    assert expected in err, (expected, err)
    assert snapshot(watched) == before, f"{watched} changed"
    assert stat_snapshot(root) == tree_before, "a shared fixture changed"
    assert list(cwd.iterdir()) == [], f"the command wrote into the working folder: {list(cwd.iterdir())}"
    assert leftovers(root, cwd) == []
    assert seconds < 5, f"a refused command took {seconds:.1f} s"
