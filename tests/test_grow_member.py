"""Member-to-member growth (depth, width, resolution) is function preserving; ONNX export of every model kind."""
from __future__ import annotations

import random
import zlib

import pytest
import torch

from conftest import randomize_bn
from scalenas.errors import ScalenasError
from scalenas.models.grow_member import grow_to
from scalenas.models.standalone import StandaloneNet
from scalenas.spaces.arch import Subnet, derive_subnet, sample_subnet
from scalenas.spaces.space import load_space, shipped_spaces

pytestmark = pytest.mark.usefixtures("torch_threads")


def _pairs(space, n, seed):
    """``n`` random (member of stage s, member of stage s+1 with the same base)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        s = rng.randrange(len(space.scaling) - 1)
        _, a = sample_subnet(space, rng, stage=s)
        sc = space.scaling[s + 1]
        b = Subnet(space.name, a.base, rng.choice(sc.depth), rng.choice(sc.width), rng.choice(sc.resolution))
        out.append((a, b))
    return out


@pytest.mark.parametrize("name", shipped_spaces())
def test_growth_preserves_the_function(name):
    space = load_space(name)
    # zlib.crc32, not hash(): str hashes change per process (PYTHONHASHSEED), which made the pairs random
    for k, (a, b) in enumerate(_pairs(space, 3, seed=zlib.crc32(name.encode()) % 1000)):
        small = StandaloneNet.from_subnet(space, a)
        randomize_bn(small, k)
        small.eval()
        grown = grow_to(small, b, seed=k)
        assert grown.subnet == b and not grown.training
        res = min(a.resolution, 48)  # fully convolutional up to the pool: any resolution checks the function
        x = torch.randn(2, space.in_channels, res, res, generator=torch.Generator().manual_seed(k))
        # Compared in float64: the identity is exact in real arithmetic; in float32 the split weights sum in
        # another order and deep members drift by a few 1e-5 (seen: 3.9e-5 on logits of 0.2).
        small, grown = small.double(), grown.double()
        with torch.no_grad():
            ref, out = small(x.double()), grown(x.double())
        assert ref.abs().max() > 1e-3  # a non-trivial function
        assert (out - ref).abs().max().item() <= 1e-5, (a.short(), b.short())


def test_new_channels_break_symmetry_after_a_step(digits):
    rng = random.Random(3)
    _, a = sample_subnet(digits, rng, stage=0)
    b = Subnet(digits.name, a.base, 1.0, digits.scaling[2].width[-1], a.resolution)
    small = StandaloneNet.from_subnet(digits, a)
    randomize_bn(small, 0)
    grown = grow_to(small, b, seed=0).train()
    opt = torch.optim.SGD(grown.parameters(), lr=0.1)
    x, y = torch.randn(8, 1, a.resolution, a.resolution), torch.randint(0, 10, (8,))
    torch.nn.functional.cross_entropy(grown(x), y).backward()
    opt.step()
    w = grown.stem[0].weight.detach().reshape(grown.stem[0].out_channels, -1)
    c_old = small.stem[0].out_channels
    # every new stem channel started as a copy of an old one; after one step none equals its source any more
    for k in range(c_old, w.shape[0]):
        assert min((w[k] - w[j]).abs().max().item() for j in range(c_old)) > 0


def test_depth_growth_adds_zero_blocks(digits):
    a = Subnet(digits.name, (("ir_k3",), ("ir_k3", "ir_k5"), ("ir_k5",), ("ir_k3",)), 1.0, 1.0, 16)
    b = Subnet(digits.name, a.base, digits.scaling[3].depth[-1], 1.0, 16)
    assert len(derive_subnet(digits, b).layers) > len(derive_subnet(digits, a).layers)
    small = StandaloneNet.from_subnet(digits, a)
    randomize_bn(small, 1)
    grown = grow_to(small.eval(), b)
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        assert (grown(x) - small(x)).abs().max().item() <= 1e-5


def test_refuses_other_base_smaller_member_and_other_kinds(digits):
    a = Subnet(digits.name, (("ir_k3",), ("ir_k3", "ir_k5"), ("ir_k5",), ("ir_k3",)), 1.2, 1.2, 20)
    model = StandaloneNet.from_subnet(digits, a)
    other = Subnet(digits.name, (("ir_k5",), ("ir_k3", "ir_k5"), ("ir_k5",), ("ir_k3",)), 1.36, 1.36, 24)
    with pytest.raises(ScalenasError, match="another base"):
        grow_to(model, other)
    with pytest.raises(ScalenasError, match="smaller|narrower|lower resolution"):
        grow_to(model, Subnet(digits.name, a.base, 1.0, 1.0, 16))
    from scalenas.models.vit import ViT

    with pytest.raises(ScalenasError, match="CNN"):
        grow_to(ViT(), a)
    with pytest.raises(ScalenasError, match="JSON"):
        grow_to(model, "{not json")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["cnn", "vit", "grown"])
def test_onnx_export_matches_pytorch(kind, tmp_path):
    import onnxruntime  # noqa: F401 - the test extra installs the export extra's packages: this never skips
    import onnxscript  # noqa: F401
    from scalenas.models.grow import grow
    from scalenas.models.onnx_export import check_onnx, export_onnx
    from scalenas.models.vit import ViT

    cnn = StandaloneNet.from_subnet("digits-tiny", {"space": "digits-tiny", "base": [["ir_k3"], ["ir_k3", "ir_k5"],
                                                    ["ir_k5"], ["ir_k3"]], "depth": 1.0, "width": 1.0,
                                                    "resolution": 16})
    randomize_bn(cnn, 0)
    model = {"cnn": cnn, "vit": ViT(), "grown": grow(ViT(depth=3), "2x")}[kind].eval()
    path = export_onnx(model, tmp_path / f"{kind}.onnx")
    for batch in (1, 5):  # dynamic batch size
        assert check_onnx(model, path, batch=batch) <= 1e-4
    assert not list(tmp_path.glob(".*.tmp"))


# ------------------------------------------------------------------------------------------ command line
@pytest.fixture(scope="module")
def tiny_search(tmp_path_factory):
    """A tiny trained supernet, a 1-generation search and one extrapolated member."""
    from scalenas.cli.main import main
    from scalenas.spaces.targets import reachable_target

    root = tmp_path_factory.mktemp("family")
    run = root / "run"
    assert main(["train-supernet", "--steps", "3", "--batch-size", "16", "--panel-random", "0", "--out", str(run),
                 "--no-progress"]) == 0
    target = reachable_target(load_space("digits-tiny"))
    assert main(["search", "--run", str(run), "--target-flops", str(target), "--population", "4", "--generations",
                 "1", "--elites", "2", "--workers", "0", "--no-progress"]) == 0
    assert main(["extrapolate", "--run", str(run / "search"), "--steps", "1"]) == 0
    return run / "search"


@pytest.mark.slow
def test_cli_train_family_grow_then_grow_to_and_onnx(tiny_search, tmp_path, capsys):
    import pandas as pd

    from scalenas.cli.main import main
    from scalenas.models.registry import load_model

    assert main(["train", "--family", str(tiny_search), "--grow", "--steps", "2", "--batch-size", "16",
                 "--no-progress"]) == 0
    rows = pd.read_csv(tiny_search / "standalone.csv")
    assert sorted(rows["stage"]) == [0, 1, 2, 3, 4] and rows["init"].str.contains("grown-init").sum() == 4
    assert main(["report", str(tiny_search), "--format", "csv", "--no-plots"]) == 0
    table = capsys.readouterr().out
    assert "extrapolated" in table
    # rerunning resumes: every member is finished, nothing is retrained
    before = (tiny_search / "family-grown" / "s4" / "result.json").stat().st_mtime_ns
    assert main(["train", "--family", str(tiny_search), "--grow", "--steps", "2", "--no-progress"]) == 0
    assert (tiny_search / "family-grown" / "s4" / "result.json").stat().st_mtime_ns == before

    s3 = tiny_search / "family-grown" / "s3" / "final.pt"
    out = tmp_path / "s4.pt"
    assert main(["grow", "--model", str(s3), "--to", str(tiny_search / "member_s4.json"), "--out", str(out)]) == 0
    small, big = load_model(s3).eval(), load_model(out).eval()
    x = torch.randn(2, 1, small.resolution, small.resolution)
    with torch.no_grad():
        assert (small(x) - big(x)).abs().max().item() <= 1e-5
    # growing back down is refused in one line, nothing written
    assert main(["grow", "--model", str(out), "--to", small.subnet.to_json(), "--out", str(tmp_path / "x.pt")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1 and not (tmp_path / "x.pt").exists()
    import onnxruntime  # noqa: F401
    assert main(["export", "--model", str(out), "--format", "onnx", "--out", str(tmp_path / "s4.onnx")]) == 0
    assert "max abs diff" in capsys.readouterr().out


@pytest.mark.parametrize("argv, expect", [
    (["grow", "--model", "m.pt", "--out", "o.pt"], "--depth"),
    (["export", "--arch", "{}", "--model", "m.pt", "--out", "o.onnx"], "not both"),
    (["train", "--grow", "--arch", "vit"], "--family"),
])
def test_cli_refusals(argv, expect, tmp_path, monkeypatch, capsys):
    from scalenas.cli.main import main

    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expect in err[0]
