"""``scalenas train``: one standalone model (CNN from JSON, ViT / grown model files), resume, inits, errors.

Every run is a few steps on the embedded digits at batch 32, single-threaded (the suite shares 2 cores).
"""
from __future__ import annotations

import json
import signal

import pandas as pd
import pytest
import torch

from scalenas.train.checkpoint import save_checkpoint
from scalenas.cli.main import main
from scalenas.train.config import load_job
from scalenas.errors import ScalenasError
from scalenas.models.registry import load_model, save_model
from scalenas.spaces.space import load_space
from scalenas.models.standalone import StandaloneNet
from scalenas.models.supernet import SuperNet, export_subnet
from scalenas.train.standalone import TRAIN_CKPT_NAME, build_model, train_standalone
from scalenas.models.vit import ViT

SPACE = load_space("digits-tiny")
SMALL = {"space": "digits-tiny", "base": [["ir_k3"], ["ir_k3"], ["ir_k3"], ["ir_k3"]], "depth": 1.0, "width": 1.0,
         "resolution": 16}
IN_STAGE1 = {**SMALL, "depth": 1.08, "width": 1.04, "resolution": 18}
OUTSIDE = {**SMALL, "depth": 2.0, "width": 1.9, "resolution": 30}  # an extrapolated member
FAST = ["--steps", "3", "--batch-size", "32", "--threads", "1", "--no-progress"]


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def cfg(**kw):
    over = {"steps": 3, "batch_size": 32, "threads": 1, "log_every": 1, "checkpoint_every": 100, "data_seed": 0}
    over.update(kw)
    return load_job("digits", over)


def one_line_error(capsys, argv: list[str], word: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("scalenas: error:") and "\n" not in err and word in err, err


@pytest.fixture(scope="module")
def supernet_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("sn") / "checkpoint.pt"
    save_checkpoint(path, {"space": SPACE.name, "space_yaml": SPACE.raw, "space_path": SPACE.path,
                           "model": SuperNet(SPACE).state_dict(), "config": {}})
    return path


# ------------------------------------------------------------------------------------------ training
def test_cnn_from_inline_json(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--arch", json.dumps(SMALL), "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "holdout top-1" in printed and "test top-1" in printed
    res = json.loads((out / "result.json").read_text())
    assert res["kind"] == "cnn" and res["resolution"] == 16 and res["steps"] == 3 and res["data_seed"] == 0
    assert 0.0 <= res["holdout_top1"] <= 1.0 and 0.0 <= res["test_top1"] <= 1.0
    assert res["flops"] > 0 and res["params"] > 0 and res["init"].startswith("scratch")
    log = pd.read_csv(out / "train_log.csv")
    assert {"step", "lr", "loss", "train_top1", "images_per_s"} <= set(log.columns) and log["step"].max() == 3
    model = load_model(out / "final.pt")
    assert isinstance(model, StandaloneNet) and model.subnet.to_dict() == SMALL
    for name in ("config.yaml", "split.json", "arch.json", TRAIN_CKPT_NAME):
        assert (out / name).is_file()


def test_vit_model_file_trains_at_its_image_size(tmp_path):
    torch.manual_seed(0)
    vit = ViT(image_size=8, patch_size=4, in_channels=1, num_classes=10, dim=16, depth=2, heads=2)
    save_model(tmp_path / "vit.pt", vit)
    out = tmp_path / "run"
    summary = train_standalone(cfg(steps=2), str(tmp_path / "vit.pt"), out_dir=out, progress=False)
    res = summary["result"]
    assert res["kind"] == "vit" and res["resolution"] == 8 and res["init"].startswith("model file")
    trained = load_model(out / "final.pt")
    assert isinstance(trained, ViT)
    assert not torch.equal(trained.head.weight, vit.head.weight)  # it trained, starting from the file's weights


def test_resume_gives_the_uninterrupted_weights(tmp_path):
    arch = json.dumps(SMALL)
    c = cfg(steps=5, dropout=0.2)  # dropout: the torch RNG must be restored too
    full = train_standalone(c, arch, out_dir=tmp_path / "full", progress=False)
    assert full["finished"]
    part = train_standalone(c, arch, out_dir=tmp_path / "part", progress=False, stop_after=2)
    assert not part["finished"] and part["step"] == 2 and (tmp_path / "part" / TRAIN_CKPT_NAME).is_file()
    assert not (tmp_path / "part" / "final.pt").exists()
    with pytest.raises(ScalenasError, match="--resume"):  # no silent restart over an existing run
        train_standalone(c, arch, out_dir=tmp_path / "part", progress=False)
    done = train_standalone(cfg(steps=99), None, out_dir=tmp_path / "part", resume=True, progress=False)
    assert done["finished"] and done["step"] == 5  # the run's own recipe wins over the new flags
    a = load_model(tmp_path / "full" / "final.pt").state_dict()
    b = load_model(tmp_path / "part" / "final.pt").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert pd.read_csv(tmp_path / "part" / "train_log.csv")["step"].tolist() == [1, 2, 3, 4, 5]
    assert done["result"]["holdout_top1"] == full["result"]["holdout_top1"]


def test_sigint_saves_and_exits_130(tmp_path, monkeypatch, capsys):
    import scalenas.train.loop as ts

    real = ts.lr_at

    def lr_then_interrupt(step, *a, **k):
        if step == 1:
            signal.raise_signal(signal.SIGINT)
        return real(step, *a, **k)

    monkeypatch.setattr(ts, "lr_at", lr_then_interrupt)
    out = tmp_path / "run"
    assert main(["train", "--arch", json.dumps(SMALL), "--out", str(out), *FAST]) == 130
    assert "--resume" in capsys.readouterr().err
    payload = torch.load(out / TRAIN_CKPT_NAME, weights_only=True)
    assert payload["step"] == 2 and payload["finished"] is False


# ------------------------------------------------------------------------------------------ initialisation
def test_init_supernet_copies_the_inherited_weights(tmp_path, supernet_ckpt):
    spec = build_model(json.dumps(IN_STAGE1), f"supernet:{supernet_ckpt}")
    sn = SuperNet(SPACE)
    sn.load_state_dict(torch.load(supernet_ckpt, weights_only=True)["model"])
    ref = export_subnet(sn, spec.subnet, side=0).state_dict()
    got = spec.model.state_dict()
    assert spec.resolution == 18 and all(torch.equal(got[k], ref[k]) for k in ref)
    out = tmp_path / "run"
    assert main(["train", "--arch", json.dumps(IN_STAGE1), "--init", f"supernet:{supernet_ckpt}", "--out", str(out),
                 "--steps", "1", "--batch-size", "32", "--threads", "1", "--no-progress"]) == 0
    assert json.loads((out / "result.json").read_text())["init"].startswith("supernet")


def test_init_file_must_match_the_arch_and_freeze_shared_trains_adapters(tmp_path, capsys):
    from scalenas.models.grow import grow

    save_model(tmp_path / "cnn.pt", StandaloneNet.from_subnet(SPACE, SMALL))
    one_line_error(capsys, ["train", "--arch", json.dumps(IN_STAGE1), "--init", str(tmp_path / "cnn.pt"), *FAST],
                   "does not match")
    one_line_error(capsys, ["train", "--arch", str(tmp_path / "cnn.pt"), "--freeze-shared", *FAST], "grown")
    torch.manual_seed(0)
    vit = ViT(image_size=8, patch_size=4, in_channels=1, num_classes=10, dim=16, depth=2, heads=2)
    save_model(tmp_path / "grown.pt", grow(vit, "2x"))
    out = tmp_path / "run"
    summary = train_standalone(cfg(steps=2), None, init=str(tmp_path / "grown.pt"), out_dir=out, progress=False,
                               freeze_shared=True)
    assert summary["result"]["kind"] == "grown" and summary["result"]["frozen_shared"]
    before, after = load_model(tmp_path / "grown.pt"), load_model(out / "final.pt")
    shared = "model.blocks.0.block.attn.qkv.weight"
    sa, sb = before.state_dict(), after.state_dict()
    assert torch.equal(sa[shared], sb[shared]) and torch.equal(sa["model.head.weight"], sb["model.head.weight"])
    assert any(not torch.equal(sa[k], sb[k]) for k in sa if "adapter" in k)


# ------------------------------------------------------------------------------------------ bad inputs
def test_bad_inputs_are_one_line_errors(tmp_path, capsys, supernet_ckpt):
    one_line_error(capsys, ["train", "--arch", json.dumps(OUTSIDE), "--init", f"supernet:{supernet_ckpt}", *FAST],
                   "does not fit the supernet")
    one_line_error(capsys, ["train", "--arch", str(tmp_path / "missing.json"), *FAST], "no such file")
    one_line_error(capsys, ["train", "--arch", "{not json", *FAST], "malformed JSON")
    one_line_error(capsys, ["train", *FAST], "--arch")
    one_line_error(capsys, ["train", "--arch", json.dumps(SMALL), "--steps", "0", "--threads", "1"], "steps")
    vit = ViT(image_size=8, patch_size=4, in_channels=1, num_classes=10, dim=16, depth=1, heads=2)
    save_model(tmp_path / "vit.pt", vit)
    one_line_error(capsys, ["train", "--arch", str(tmp_path / "vit.pt"), "--init", f"supernet:{supernet_ckpt}",
                            *FAST], "only CNN")
    # an architecture of another space than the supernet's
    mbv3 = load_space("cifar-mbv3")
    arch = {"space": mbv3.name, "base": [[st.ops[0]] for st in mbv3.stages], "depth": 1.0, "width": 1.0,
            "resolution": mbv3.base_resolution}
    one_line_error(capsys, ["train", "--arch", json.dumps(arch), "--init", f"supernet:{supernet_ckpt}", *FAST],
                   "trained on 'digits-tiny'")
