"""The streaming source: ImageFolder trees (and ImageNet's train/val layout), memory-mapped arrays and CIFAR read
on demand by DataLoader workers, behind the same split interface as the in-memory source; cached file lists;
bad files; the device augmentation levels; training, resume and the search's evaluator on a streamed source."""
from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from scalenas.cli.main import main
from scalenas.data.augment import DevicePipeline
from scalenas.data.datasets import BatchIterator, iterate_eval, load_data
from scalenas.data.sources import FILE_LIST
from scalenas.errors import ScalenasError
from scalenas.train.checkpoint import read_checkpoint


def make_tree(root, classes=("ant", "bee", "cat"), per_class=12, size=20, mode="RGB", fmt="png", start=0):
    """An ImageFolder tree; image k (over the whole tree) has the value ``start + k`` at its top-left pixel."""
    k = start
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape = (size, size, 3) if mode == "RGB" else (size, size)
            arr = rng.integers(0, 255, shape, dtype=np.uint8)
            arr[: size // 2, : size // 2] = k  # a constant quadrant: resizing keeps the value at (0, 0)
            Image.fromarray(arr, mode).save(root / c / f"{i:03d}.{fmt}")
            k += 1
    return root


# ------------------------------------------------------------------------------------------ the source
def test_stream_and_memory_give_the_same_inputs(tmp_path):
    root = make_tree(tmp_path / "imgs")
    mem = load_data(str(root), seed=1, source="memory", in_channels=3, store_size=16)
    st = load_data(str(root), seed=1, source="stream", in_channels=3, store_size=16, workers=0)
    assert st.info["source_mode"] == "stream" and mem.info["source_mode"] == "memory"
    assert st.info["indices"] == mem.info["indices"]  # the same stratified split
    assert st.train.kind == "stream" and len(st.train) == len(mem.train)
    np.testing.assert_allclose(st.mean, mem.mean, atol=1e-6)  # the whole train split is the stats sample here
    for name in ("train", "holdout", "test"):
        a = torch.cat([x for x, _ in iterate_eval(getattr(mem, name), 7)])
        raw = [(x, y) for x, y in iterate_eval(getattr(st, name), 7)]
        assert raw[0][0].dtype == torch.uint8  # pixels travel as uint8, normalised on the device
        b = torch.cat([st.pipeline.eval(x, 16) for x, _ in raw])
        torch.testing.assert_close(b, mem.pipeline.eval(a, 16), atol=1e-4, rtol=0)
        assert torch.equal(torch.cat([y for _, y in raw]), getattr(mem, name).y)


def test_auto_source_streams_above_the_memory_limit(tmp_path):
    root = make_tree(tmp_path / "imgs")
    assert load_data(str(root), in_channels=3, workers=0).info["source_mode"] == "memory"
    big = load_data(str(root), in_channels=3, workers=0, memory_limit_mb=1, store_size=256)
    assert big.info["source_mode"] == "stream"


def test_stream_batches_resume_exactly_with_workers(tmp_path):
    root = make_tree(tmp_path / "imgs", per_class=16)
    data = load_data(str(root), seed=0, source="stream", in_channels=3, store_size=8, workers=2)
    ref = BatchIterator(data.train, 4, seed=3)
    expected = [next(ref) for _ in range(14)]  # several epochs
    ref.close()
    it = BatchIterator(data.train, 4, seed=3)
    for _ in range(5):
        next(it)
    state = json.loads(json.dumps(it.state_dict()))
    it.close()
    resumed = BatchIterator(data.train, 4, seed=3)
    resumed.load_state_dict(state)
    for k in range(5, 14):
        x, y = next(resumed)
        assert torch.equal(x, expected[k][0]) and torch.equal(y, expected[k][1])
    resumed.close()


def test_ranks_read_disjoint_shards(tmp_path):
    root = make_tree(tmp_path / "imgs", per_class=16)
    data = load_data(str(root), seed=0, source="stream", in_channels=3, store_size=8, workers=0)
    ids = []
    for rank in (0, 1):
        it = BatchIterator(data.train, 4, seed=3, rank=rank, world_size=2)
        ids.append({int(v) for _ in range(it.steps_per_epoch) for v in next(it)[0][:, 0, 0, 0]})
    assert not ids[0] & ids[1] and len(ids[0]) == len(ids[1]) > 0


def test_imagenet_layout_val_is_the_test_split(tmp_path):
    make_tree(tmp_path / "inet" / "train")
    make_tree(tmp_path / "inet" / "val", per_class=3, start=100)
    d = load_data(str(tmp_path / "inet"), source="stream", in_channels=3, workers=0)
    assert d.info["test_source"].endswith("val") and len(d.test) == 9 and d.info["test_frac"] is None
    assert len(d.train) + len(d.holdout) == 36
    make_tree(tmp_path / "inet" / "val", classes=("dog",), per_class=1)
    with pytest.raises(ScalenasError, match="dog.*not in the training classes"):
        load_data(str(tmp_path / "inet"), source="stream", in_channels=3, workers=0)


def test_file_list_is_cached_and_a_changed_tree_is_detected(tmp_path):
    root = make_tree(tmp_path / "imgs")
    run = tmp_path / "run"
    run.mkdir()
    d = load_data(str(root), source="stream", in_channels=3, workers=0, cache_dir=run)
    d.save_info(run / "split.json")
    listed = json.loads((run / FILE_LIST).read_text())
    assert len(listed["train"]["files"]) == 36
    again = load_data(str(root), source="stream", in_channels=3, workers=0, cache_dir=run)
    assert again.info["indices"] == d.info["indices"]
    os.remove(root / "bee" / "003.png")
    with pytest.raises(ScalenasError, match="'bee' shrank from 12 to 11.*rescan-data"):
        load_data(str(root), source="stream", in_channels=3, workers=0, cache_dir=run)
    fresh = load_data(str(root), source="stream", in_channels=3, workers=0, cache_dir=run, rescan=True)
    assert fresh.info["sizes"]["train"] + fresh.info["sizes"]["holdout"] + fresh.info["sizes"]["test"] == 35


def test_unreadable_images_are_replaced_counted_and_bounded(tmp_path, capfd):
    root = make_tree(tmp_path / "imgs", per_class=20)
    (root / "cat" / "015.png").write_bytes(b"not an image")
    d = load_data(str(root), seed=0, source="stream", in_channels=3, workers=0, store_size=8, max_bad_frac=0.05)
    seen = sum(len(y) for _, y in iterate_eval(d.train, 8)) + sum(len(y) for _, y in iterate_eval(d.holdout, 8)) \
        + sum(len(y) for _, y in iterate_eval(d.test, 8))
    assert seen == 60  # batches keep their size: a bad file is replaced by the next readable one
    assert len(d.train.bad.bad) == 1 and "015.png" in capfd.readouterr().err
    for i in range(8):
        (root / "ant" / f"{i:03d}.png").write_bytes(b"broken")
    with pytest.raises(ScalenasError, match="unreadable images.*max_bad_frac=0.05"):
        d = load_data(str(root), seed=0, source="stream", in_channels=3, workers=0, store_size=8,
                      max_bad_frac=0.05, rescan=True)  # the channel statistics' sample already reads them
        for _ in iterate_eval(d.train, 8):
            pass


def test_bad_trees_and_arrays_are_one_line_errors(tmp_path):
    root = make_tree(tmp_path / "imgs")
    (root / "empty").mkdir()
    with pytest.raises(ScalenasError, match="empty class folder"):
        load_data(str(root), source="stream", workers=0)
    mixed = make_tree(tmp_path / "mixed", classes=("a",))
    make_tree(mixed, classes=("b",), mode="L")
    with pytest.raises(ScalenasError, match="mixed channel counts.*in_channels"):
        load_data(str(mixed), source="stream", workers=0)
    assert load_data(str(mixed), source="stream", workers=0, in_channels=3).in_channels == 3
    arrays = tmp_path / "arr"
    arrays.mkdir()
    np.save(arrays / "x.npy", np.zeros((20, 8, 8), dtype=np.int32))
    np.save(arrays / "y.npy", np.arange(20) % 2)
    with pytest.raises(ScalenasError, match="must be uint8 or float32"):
        load_data(str(arrays), workers=0)
    np.save(arrays / "x.npy", np.zeros((20, 8), dtype=np.uint8))
    with pytest.raises(ScalenasError, match=r"got shape \(20, 8\)"):
        load_data(str(arrays), workers=0)
    np.savez_compressed(tmp_path / "c.npz", x=np.zeros((20, 8, 8), np.uint8), y=np.arange(20) % 2)
    with pytest.raises(ScalenasError, match="cannot memory-map.*savez"):
        load_data(str(tmp_path / "c.npz"), source="stream", workers=0)


def test_memory_mapped_arrays_stream(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (60, 12, 12, 3), dtype=np.uint8)
    y = np.arange(60) % 3
    arrays = tmp_path / "arr"
    arrays.mkdir()
    np.save(arrays / "x.npy", x)
    np.save(arrays / "y.npy", y)
    np.savez(tmp_path / "plain.npz", x=x, y=y)
    d = load_data(str(arrays), workers=0)
    z = load_data(str(tmp_path / "plain.npz"), source="stream", workers=0)
    assert d.info["source_mode"] == z.info["source_mode"] == "stream" and d.in_channels == 3
    assert isinstance(d.train.dataset.x, np.memmap) and isinstance(z.train.dataset.x, np.memmap)
    a, ya = d.train.take(torch.arange(5))
    b, yb = z.train.take(torch.arange(5))
    assert torch.equal(a, b) and torch.equal(ya, yb)
    pos = d.train.indices[:5]
    assert torch.equal(a, torch.from_numpy(x[pos].transpose(0, 3, 1, 2)))
    grey = load_data(str(arrays), workers=0, in_channels=1)
    assert grey.train.take(torch.arange(2))[0].shape == (2, 1, 12, 12)


def test_workers_above_the_cores_are_capped(tmp_path, capfd):
    root = make_tree(tmp_path / "imgs")
    d = load_data(str(root), source="stream", in_channels=3, workers=10_000)
    assert d.train.workers == len(os.sched_getaffinity(0))
    assert "workers=10000 is more than" in capfd.readouterr().err


# ------------------------------------------------------------------------------------------ augmentation
@pytest.mark.parametrize("level", ["none", "shift", "standard", "strong"])
def test_augmentation_levels_are_seeded_and_reach_the_resolution(level):
    x = torch.randint(0, 255, (6, 3, 20, 20), dtype=torch.uint8)
    p = DevicePipeline(level, True, [0.5] * 3, [0.25] * 3, stored=20)
    a, b, c = p.train(x, 16, seed=1), p.train(x, 16, seed=1), p.train(x, 16, seed=2)
    assert a.shape == (6, 3, 16, 16) and a.dtype == torch.float32
    assert torch.equal(a, b) and (level == "none" or not torch.equal(a, c))
    state = torch.get_rng_state()
    p.train(x, 12, seed=1)
    assert torch.equal(state, torch.get_rng_state())  # training's own random stream is untouched


def test_standard_crop_at_two_resolutions_sees_the_same_view_and_eval_crops_large_images():
    x = torch.nn.functional.interpolate(torch.rand(4, 3, 6, 6), size=(96, 96), mode="bilinear")  # smooth
    p = DevicePipeline("standard", False, [0.0] * 3, [1.0] * 3, stored=96)
    small, big = p.train(x, 24, seed=5), p.train(x, 48, seed=5)
    down = torch.nn.functional.interpolate(big, size=(24, 24), mode="bilinear", antialias=True)
    assert (small - down).abs().mean() < 0.05  # one crop, two sizes
    assert p.eval_crop == 0.875 and p.eval(x, 64).shape == (4, 3, 64, 64)
    assert DevicePipeline("standard", True, [0.0], [1.0], stored=28).eval_crop == 1.0


# ------------------------------------------------------------------------------------------ consumers
@pytest.mark.slow
def test_train_supernet_streams_resumes_exactly_and_feeds_the_evaluator(tmp_path, capsys):
    root = make_tree(tmp_path / "imgs", classes=[f"c{i}" for i in range(10)], per_class=10, size=24, mode="L")
    args = ["train-supernet", "--data", str(root), "--source", "stream", "--workers", "2", "--store-size", "16",
            "--steps", "6", "--batch-size", "8", "--checkpoint-every", "3", "--panel-random", "0",
            "--bn-calib-batches", "1", "--threads", "1", "--no-progress", "--augment", "standard"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    from scalenas.train.supernet import train_supernet  # noqa: F401 - the same entry point, interrupted
    os.environ["SCALENAS_DEBUG_STOP_AFTER"] = "4"
    try:
        assert main(args + ["--out", str(tmp_path / "b")]) == 130
    finally:
        del os.environ["SCALENAS_DEBUG_STOP_AFTER"]
    assert main(["train-supernet", "--resume", "--out", str(tmp_path / "b"), "--no-progress", "--threads",
                 "1"]) == 0
    a, b = read_checkpoint(tmp_path / "a"), read_checkpoint(tmp_path / "b")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert json.loads((tmp_path / "a" / "split.json").read_text())["source_mode"] == "stream"
    assert (tmp_path / "a" / FILE_LIST).is_file()

    from scalenas.search.fitness import SupernetEvaluator
    from scalenas.spaces.arch import Subnet  # noqa: F401
    ev = SupernetEvaluator(str(tmp_path / "a" / "checkpoint.pt"), calib_batches=1, calib_batch_size=8)
    assert ev.split.kind == "stream" and ev.split.workers == 0
    panel = json.loads(json.dumps(read_checkpoint(tmp_path / "a")["config"]))
    assert panel["source"] == "stream"
    import pandas as pd
    arch = pd.read_csv(tmp_path / "a" / "panel.csv")["arch"].iloc[0]
    out = ev.evaluate(arch)
    assert 0.0 <= out["top1"] <= 1.0 and np.isfinite(out["loss"])

    # the tree changed after the run was made: resuming (extending) says so in one line
    os.remove(root / "c3" / "000.png")
    capsys.readouterr()
    rc = main(["train-supernet", "--resume", "--out", str(tmp_path / "a"), "--steps", "8", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "rescan-data" in err, err


def test_tensorboard_scalars_next_to_the_log(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert main(["train-supernet", "--steps", "4", "--log-every", "2", "--batch-size", "16", "--panel-random", "0",
                 "--bn-calib-batches", "1", "--threads", "1", "--no-progress", "--out", str(out)]) == 0
    ea = EventAccumulator(str(out / "tensorboard"))
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    assert {"train/loss", "train/train_top1", "train/lr", "train/images_per_s", "train/data_wait_s"} <= tags
    assert any(t.startswith("train/loss_stage") for t in tags)
    assert [e.step for e in ea.Scalars("train/loss")] == [2, 4]


def test_bad_flags_of_the_pipeline_are_one_line_errors(capsys, tmp_path):
    for argv, needle in ((["--source", "disk"], "--source"), (["--augment", "heavy"], "--augment"),
                         (["--workers", "-1"], "--workers")):
        try:
            rc = main(["train-supernet", *argv, "--out", str(tmp_path / "x")])
        except SystemExit as e:  # argparse's own choices
            rc = e.code
        err = capsys.readouterr().err
        assert rc == 2 and needle in err.splitlines()[-1], err
    assert not (tmp_path / "x").exists()


def test_npz_zip_offsets_are_read_from_the_local_header(tmp_path):
    # A member whose local header carries an extra field: the memory map must start after it.
    x = np.arange(2 * 8 * 8, dtype=np.uint8).reshape(2, 8, 8)
    path = tmp_path / "a.npz"
    np.savez(path, x=x, y=np.array([0, 1]))
    with zipfile.ZipFile(path) as z:
        assert all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist())
    from scalenas.data.sources import open_npz_member
    assert np.array_equal(open_npz_member(path, "x"), x)


def test_the_imagenet_job_streams_train_and_val_with_the_standard_pipeline(tmp_path):
    from scalenas.train.config import load_job, load_run_data

    make_tree(tmp_path / "inet" / "train", per_class=10, size=40)
    make_tree(tmp_path / "inet" / "val", per_class=2, size=40, start=100)
    cfg = load_job("imagenet", {"data": str(tmp_path / "inet"), "device": "cpu", "workers": 0})
    assert (cfg.source, cfg.augment, cfg.flip, cfg.store_size) == ("stream", "standard", True, 354)
    data = load_run_data(cfg, 3, tmp_path / "run", torch.device("cpu"))
    assert data.info["test_source"].endswith("val") and len(data.test) == 6
    assert data.pipeline.describe()["eval_crop"] == 0.875 and data.pipeline.scale == (0.08, 1.0)
    x, _ = data.train.take(torch.arange(2))
    assert x.shape == (2, 3, 354, 354) and x.dtype == torch.uint8
    assert data.pipeline.train(x, 224, seed=0).shape == (2, 3, 224, 224)
