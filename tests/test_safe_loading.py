"""No code runs from a user's file: crafted checkpoints, model files and CIFAR batches are refused, unexecuted."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from scalenas.cli.main import main
from scalenas.errors import ScalenasError
from scalenas.models.registry import load_model

SMALL = {"space": "digits-tiny", "base": [["ir_k3"], ["ir_k3"], ["ir_k3"], ["ir_k3"]], "depth": 1.0, "width": 1.0,
         "resolution": 16}


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: the file appears iff the loader ran code from the pickle."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _crafted_pt(path: Path, marker: Path, fmt: str) -> Path:
    torch.save({"format": fmt, "model": _Payload(marker), "space": "digits-tiny", "space_yaml": {}}, path)
    return path


@pytest.fixture
def crafted(tmp_path):
    marker = tmp_path / "PWNED"
    sn_dir = tmp_path / "sn"
    sn_dir.mkdir()
    supernet = _crafted_pt(sn_dir / "checkpoint.pt", marker, "scalenas-supernet/1")
    model = _crafted_pt(tmp_path / "model.pt", marker, "scalenas-model/1")
    tr_dir = tmp_path / "tr"
    tr_dir.mkdir()
    _crafted_pt(tr_dir / "train_checkpoint.pt", marker, "scalenas-train/1")
    return {"marker": marker, "supernet": supernet, "sn_dir": sn_dir, "model": model, "tr_dir": tr_dir}


def _commands(c, tmp_path):
    arch = json.dumps(SMALL)
    return {
        "export --supernet": ["export", "--arch", arch, "--supernet", str(c["supernet"]), "--out",
                              str(tmp_path / "o.pt")],
        "search --supernet": ["search", "--supernet", str(c["supernet"]), "--target-flops", "1M", "--workers", "0",
                              "--no-progress"],
        "search --run": ["search", "--run", str(c["sn_dir"]), "--target-flops", "1M", "--workers", "0",
                         "--no-progress"],
        "train-supernet --resume": ["train-supernet", "--resume", "--out", str(c["sn_dir"]), "--no-progress"],
        "train --init supernet:": ["train", "--arch", arch, "--init", f"supernet:{c['supernet']}", "--steps", "1",
                                   "--out", str(tmp_path / "t1"), "--no-progress"],
        "train --init FILE": ["train", "--arch", arch, "--init", str(c["model"]), "--steps", "1", "--out",
                              str(tmp_path / "t2"), "--no-progress"],
        "train --arch FILE": ["train", "--arch", str(c["model"]), "--steps", "1", "--out", str(tmp_path / "t3"),
                              "--no-progress"],
        "train --resume": ["train", "--resume", "--out", str(c["tr_dir"]), "--no-progress"],
        "grow --model": ["grow", "--model", str(c["model"]), "--depth", "2x", "--out", str(tmp_path / "g.pt")],
    }


@pytest.mark.parametrize("name", ["export --supernet", "search --supernet", "search --run", "train-supernet --resume",
                                  "train --init supernet:", "train --init FILE", "train --arch FILE", "train --resume",
                                  "grow --model"])
def test_crafted_checkpoint_is_refused_and_never_runs(name, crafted, tmp_path, capsys):
    argv = _commands(crafted, tmp_path)[name]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert not crafted["marker"].exists(), f"{name} ran code from the file"


def test_load_model_refuses_crafted_file(crafted):
    with pytest.raises(ScalenasError, match="unsafe|unreadable"):
        load_model(crafted["model"])
    assert not crafted["marker"].exists()


def test_crafted_cifar_batch_is_refused(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    root = tmp_path / "cifar"
    root.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(root / name, "wb") as fh:
            pickle.dump({b"data": _Payload(marker), b"labels": [0]}, fh)
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"a"]}))
    rc = main(["train-supernet", "--data", str(root), "--steps", "1", "--out", str(tmp_path / "run"), "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CIFAR" in err[0] and "Traceback" not in err[0], err
    assert not marker.exists(), "the CIFAR reader ran code from the pickle"
    assert not (tmp_path / "run").exists()


def test_genuine_files_still_load(tmp_path):
    """Every genuine scalenas file loads with weights_only=True (model file round trip)."""
    from scalenas.models.registry import save_model
    from scalenas.models.standalone import StandaloneNet

    net = StandaloneNet.from_subnet("digits-tiny", SMALL)
    save_model(tmp_path / "m.pt", net)
    back = load_model(tmp_path / "m.pt")
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), back.state_dict().values()))
    assert os.path.getsize(tmp_path / "m.pt") > 0
