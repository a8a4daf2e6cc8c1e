"""Shared fixtures for the core tests (spaces, small supernets, YAML variants). Keep this file small."""
from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import yaml

from scalenas.spaces.space import SPACES_DIR, SearchSpace, load_space

# The whole suite runs torch on one thread, and so do the subprocesses, Ray workers and torchrun ranks it starts:
# on a 2-core machine a test process plus its workers would otherwise oversubscribe the cores (OpenMP threads
# spin-wait on each other and small convolutions get 10-100x slower).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
torch.set_num_threads(1)


def randomize_bn(net: torch.nn.Module, seed: int = 0) -> None:
    """Random BN affine parameters and running statistics (so eval-mode BN is not the identity), and a
    classifier large enough that the logits are not ~0. Works for a SuperNet and a StandaloneNet."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(net.named_parameters()) + list(net.named_buffers()):
            leaf = name.rsplit(".", 1)[-1]
            if "bn" not in name and not name.startswith(("stem.1", "head.1")) and "classifier" not in name:
                continue
            if leaf == "weight" and "classifier" in name:
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif leaf == "weight":
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif leaf == "bias":
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif leaf == "running_mean":
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif leaf == "running_var":
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)


@pytest.fixture(scope="module")
def torch_threads():
    """One torch thread for a test module, restored after. On a 2-core machine shared with other work, two
    OpenMP threads spin-wait on each other and small forwards get 10-100x slower; one thread does not."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def no_ray_left():
    """The test must end with Ray shut down: one that leaves it running fails (after shutting it down)."""
    yield
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
        pytest.fail("Ray was left running")


def cli_code(main: Callable[[list[str]], int], args: list[str]) -> int:
    """``main(args)`` with argparse's own errors (SystemExit(2) after one stderr line) turned into a return code."""
    try:
        return main(args)
    except SystemExit as exc:
        return int(exc.code)


@pytest.fixture(scope="session")
def digits() -> SearchSpace:
    return load_space("digits-tiny")


@pytest.fixture(scope="session")
def tiny_supernet(digits):
    """One digits-tiny supernet (1 M parameters) with random BN; tests must not modify it."""
    from scalenas.models.supernet import SuperNet

    torch.manual_seed(0)
    net = SuperNet(digits)
    randomize_bn(net)
    return net.eval()


@pytest.fixture
def space_yaml(tmp_path: Path) -> Callable[..., Path]:
    """``space_yaml(edit, base="digits-tiny", name="x.yaml")`` writes a copy of a shipped space's YAML after
    ``edit(data)`` (which changes the dict in place) and returns its path."""

    def make(edit: Callable[[dict[str, Any]], Any] | None = None, base: str = "digits-tiny",
             name: str = "space.yaml") -> Path:
        data = copy.deepcopy(yaml.safe_load((SPACES_DIR / f"{base}.yaml").read_text()))
        if edit is not None:
            edit(data)
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return make
