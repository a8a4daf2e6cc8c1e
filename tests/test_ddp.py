"""Multi-process training on CPU: torchrun with 2 gloo processes on loopback draws the same subnets on every
rank and keeps the weights identical (gradients and the stop flag are all-reduced)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from scalenas.train.checkpoint import read_checkpoint
from scalenas.cli.main import main
from scalenas.train.supernet import DEBUG_ENV

pytestmark = [pytest.mark.ddp,
              pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                 reason="torch.distributed with gloo is not available")]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_gloo(tmp_path, capsys):
    out, dbg = tmp_path / "run", tmp_path / "steps"
    job = tmp_path / "job.yaml"
    job.write_text("panel_random: 0\nbn_calib_batches: 1\nlog_every: 1\nwarmup_steps: 2\n")
    env = {**os.environ, DEBUG_ENV: str(dbg), "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo",
           "MASTER_ADDR": "127.0.0.1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}",
           "-m", "scalenas.cli", "train-supernet", "--job", str(job), "--steps", "4", "--batch-size", "16",
           "--threads", "1", "--device", "cpu", "--out", str(out), "--no-progress"]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ck = read_checkpoint(out)
    assert ck["step"] == 4 and ck["finished"] is True
    assert ck["data"]["world_size"] == 2 and ck["data"]["batch_size"] == 16
    assert (out / "panel.csv").is_file()

    rows = [[json.loads(line) for line in open(f"{dbg}.rank{r}.jsonl")] for r in (0, 1)]
    assert [r["step"] for r in rows[0]] == [r["step"] for r in rows[1]] == [1, 2, 3, 4]
    for a, b in zip(*rows):
        assert (a["stage"], a["side"], a["subnets"]) == (b["stage"], b["side"], b["subnets"])  # same path
        assert a["param_sum"] == b["param_sum"]  # same weights after every step
    assert len({json.dumps(r["subnets"]) for r in rows[0]}) > 1  # a new path each step
    with torch.no_grad():
        final = float(sum(p.double().sum() for k, p in ck["model"].items() if "running_" not in k).item())
    assert final == pytest.approx(rows[0][-1]["param_sum"], rel=1e-12, abs=1e-9)

    # A 2-process checkpoint does not continue in 1 process (the data order could not be reproduced); a plain
    # --resume of the finished run changes nothing, so extend it to reach the check.
    capsys.readouterr()
    threads = torch.get_num_threads()
    try:
        rc = main(["train-supernet", "--resume", "--out", str(out), "--steps", "8", "--no-progress", "--threads",
                   "1"])
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "world_size" in err, err


WORKER = """
import torch, torch.distributed as dist
from scalenas.train.supernet import allreduce_path_grads
dist.init_process_group("gloo")
rank = dist.get_rank()
m = torch.nn.Linear(3, 2)
m.weight.grad = torch.full_like(m.weight, float(rank + 1))  # the bias has no gradient
first = allreduce_path_grads(m, 2, stop=rank == 1)   # only rank 1 was signalled
second = allreduce_path_grads(m, 2, stop=False)
print(first, second, float(m.weight.grad.mean()), m.bias.grad is None)
dist.destroy_process_group()
"""


def test_stop_request_of_one_rank_stops_every_rank():
    """A signal seen by one process only must stop all of them after the same step (else the others block in
    the next all-reduce): the stop flag rides along with the gradients."""
    port = free_port()
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (o, e) in zip(procs, outs):
        assert p.returncode == 0, e[-2000:]
        assert o.split() == ["True", "False", "1.5", "True"], o


def test_torchrun_streams_disjoint_shards_and_resumes_exactly(tmp_path):
    """2 gloo processes stream an ImageFolder: every rank reads its own share of each epoch's permutation, and a
    run interrupted after step 3 and resumed ends with the weights of an uninterrupted one."""
    from test_streaming import make_tree

    root = make_tree(tmp_path / "imgs", classes=[f"c{i}" for i in range(10)], per_class=8, size=16, mode="L")
    job = tmp_path / "job.yaml"
    job.write_text("panel_random: 0\nbn_calib_batches: 1\nlog_every: 1\nwarmup_steps: 2\ncheckpoint_every: 2\n")

    def torchrun(out, extra_env=None, resume=False):
        env = {**os.environ, DEBUG_ENV: str(out) + "-steps", "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo",
               "MASTER_ADDR": "127.0.0.1", **(extra_env or {})}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
               "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "scalenas.cli", "train-supernet"]
        cmd += (["--resume"] if resume else ["--job", str(job), "--data", str(root), "--source", "stream",
                                              "--workers", "1", "--steps", "6", "--batch-size", "8",
                                              "--threads", "1", "--device", "cpu"])
        cmd += ["--out", str(out), "--no-progress"]
        return subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)

    whole = torchrun(tmp_path / "a")
    assert whole.returncode == 0, whole.stderr[-3000:]
    cut = torchrun(tmp_path / "b", {"SCALENAS_DEBUG_STOP_AFTER": "3"})
    assert cut.returncode != 0 and "interrupted at step 3/6" in cut.stderr, cut.stderr[-3000:]  # torchrun: 1
    assert read_checkpoint(tmp_path / "b")["step"] == 3
    again = torchrun(tmp_path / "b", resume=True)
    assert again.returncode == 0, again.stderr[-3000:]
    a, b = read_checkpoint(tmp_path / "a"), read_checkpoint(tmp_path / "b")
    assert a["step"] == b["step"] == 6 and a["data"]["world_size"] == 2
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k

    rows = [[json.loads(line) for line in open(f"{tmp_path / 'a'}-steps.rank{r}.jsonl")] for r in (0, 1)]
    per_epoch = read_checkpoint(tmp_path / "a")["data"]
    assert per_epoch["num_samples"] == 60 and len(rows[0]) == len(rows[1]) == 6  # 80 - holdout 10 - test 10
    steps_per_epoch = 60 // 2 // 8  # 3
    for e in range(2):
        ids = [{v for r in rank_rows[e * steps_per_epoch:(e + 1) * steps_per_epoch] for v in r["first_pixels"]}
               for rank_rows in rows]
        assert not ids[0] & ids[1] and len(ids[0]) == len(ids[1]) == steps_per_epoch * 8
    resumed_rows = [[json.loads(line) for line in open(f"{tmp_path / 'b'}-steps.rank{r}.jsonl")] for r in (0, 1)]
    for r in (0, 1):  # the resumed run read the very batches the uninterrupted one read
        assert [x["first_pixels"] for x in resumed_rows[r]] == [x["first_pixels"] for x in rows[r]]
