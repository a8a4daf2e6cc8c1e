"""Tests for scalenas.data.datasets on real digits and on small files written here in the real on-disk formats."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from scalenas.data.batches import BatchIterator, iterate_eval, resize_batch
from scalenas.data.datasets import load_data
from scalenas.data.splits import DataSplits, Split
from scalenas.errors import ScalenasError


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def digits() -> DataSplits:
    return load_data("digits", seed=0)


def _write_cifar(root, n_train_per_batch=40, n_test=20, n_batches=2, num_classes=4, cifar100=False):
    """Write CIFAR python-version pickles: bytes keys, data uint8 (N, 3072) row-major CHW."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    label_key = b"fine_labels" if cifar100 else b"labels"

    def batch(n, offset):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        data[:, :1024] = 200  # red plane
        data[:, 1024:2048] = 100  # green plane
        data[:, 2048:2048 + 32] = 7  # first row of the blue plane
        labels = [(offset + i) % num_classes for i in range(n)]
        d = {b"batch_label": b"batch", label_key: labels, b"data": data,
             b"filenames": [f"img_{offset + i}.png".encode() for i in range(n)]}
        if cifar100:
            d[b"coarse_labels"] = [0] * n
        return d

    names = [f"data_batch_{i}" for i in range(1, n_batches + 1)] if not cifar100 else ["train"]
    for k, name in enumerate(names):
        n = n_train_per_batch * (n_batches if cifar100 else 1)
        with open(root / name, "wb") as fh:
            pickle.dump(batch(n, k * n), fh, protocol=2)
    with open(root / ("test" if cifar100 else "test_batch"), "wb") as fh:
        pickle.dump(batch(n_test, 0), fh, protocol=2)
    meta_name, meta_key = ("meta", b"fine_label_names") if cifar100 else ("batches.meta", b"label_names")
    with open(root / meta_name, "wb") as fh:
        pickle.dump({meta_key: [f"class{c}".encode() for c in range(num_classes)], b"num_cases_per_batch": 40},
                    fh, protocol=2)
    return root


def _write_image_folder(root, classes=("cat", "ant", "bee"), per_class=6, corrupt=True):
    rng = np.random.default_rng(2)
    for ci, name in enumerate(classes):
        d = root / name
        d.mkdir(parents=True)
        for i in range(per_class):
            h, w = 10 + i, 12 + 2 * i  # varied, non-square sizes: all must end at the storage size
            if i % 2:
                img = Image.fromarray(rng.integers(0, 256, size=(h, w), dtype=np.uint8), mode="L")
            else:
                arr = np.zeros((h, w, 3), dtype=np.uint8)
                arr[..., ci] = 255
                img = Image.fromarray(arr, mode="RGB")
            img.save(d / f"{i:02d}.png")
        (d / "notes.txt").write_text("not an image\n")
    bad = root / classes[0] / "corrupt.png"
    if corrupt:
        bad.write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    return root, bad


# ---------------------------------------------------------------------------------------------- digits
def test_digits_shapes_classes_and_sizes(digits):
    assert digits.name == "digits"
    assert digits.num_classes == 10 and digits.in_channels == 1
    assert digits.classes == [str(i) for i in range(10)]
    assert digits.train.x.shape[1:] == (1, 8, 8) and digits.train.x.dtype == torch.float32
    assert digits.train.y.dtype == torch.int64
    n = len(digits.train) + len(digits.holdout) + len(digits.test)
    assert n == 1797
    assert abs(len(digits.holdout) - 0.15 * n) <= 10 and abs(len(digits.test) - 0.15 * n) <= 10
    assert digits.info["sizes"] == {"train": len(digits.train), "holdout": len(digits.holdout),
                                    "test": len(digits.test)}


def test_digits_split_is_stratified_and_disjoint(digits):
    totals = np.zeros(10, dtype=int)
    for name in ("train", "holdout", "test"):
        totals += np.bincount(getattr(digits, name).y.numpy(), minlength=10)
    for name in ("holdout", "test"):
        counts = np.bincount(getattr(digits, name).y.numpy(), minlength=10)
        assert np.all(np.abs(counts - 0.15 * totals) <= 1), (name, counts)
    idx = {k: set(v["indices"]) for k, v in digits.info["indices"].items()}
    assert not (idx["train"] & idx["holdout"]) and not (idx["train"] & idx["test"])
    assert not (idx["holdout"] & idx["test"])
    assert len(idx["train"] | idx["holdout"] | idx["test"]) == 1797


def test_digits_normalisation(digits):
    x = digits.train.x
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(1), atol=1e-4)
    assert torch.allclose(x.std(dim=(0, 2, 3)), torch.ones(1), atol=1e-3)
    assert digits.info["normalisation"]["mean"] == "computed on train split"
    assert 0.0 < digits.mean[0] < 1.0 and digits.std[0] > 0
    # holdout/test use the train statistics, so they are only approximately standardised
    assert abs(float(digits.test.x.mean())) < 0.2


def test_split_determinism_by_seed(digits):
    again = load_data("digits", seed=0)
    assert torch.equal(again.train.x, digits.train.x) and torch.equal(again.test.y, digits.test.y)
    assert again.info["indices"] == digits.info["indices"]
    other = load_data("digits", seed=1)
    assert other.info["indices"]["test"]["sha256"] != digits.info["indices"]["test"]["sha256"]
    assert other.info["indices"]["train"]["indices"] != digits.info["indices"]["train"]["indices"]


def test_info_is_json_and_saved_atomically(digits, tmp_path):
    out = tmp_path / "run" / "data_split.json"
    digits.save_info(out)
    back = json.loads(out.read_text())
    assert back["seed"] == 0 and back["holdout_frac"] == 0.15 and back["test_frac"] == 0.15
    assert back["mean"] == digits.mean and back["skipped"] == 0
    assert len(back["indices"]["train"]["sha256"]) == 64
    assert [p.name for p in out.parent.iterdir()] == ["data_split.json"]  # no temp file left behind


def test_channel_repeat_and_store_size():
    d = load_data("digits", seed=0, in_channels=3, store_size=16)
    assert d.train.x.shape[1:] == (3, 16, 16) and d.in_channels == 3
    assert torch.equal(d.train.x[:, 0], d.train.x[:, 2])
    assert d.info["channel_conversion"].startswith("repeat")
    assert d.info["native_size"] == [8, 8] and d.info["storage_size"] == [16, 16]
    assert len(d.mean) == 3


def test_given_mean_std_are_used():
    d = load_data("digits", seed=0, mean=[0.5], std=[0.25])
    raw = load_data("digits", seed=0, mean=[0.0], std=[1.0])
    assert torch.allclose(d.train.x, (raw.train.x - 0.5) / 0.25, atol=1e-5)
    assert d.mean == [0.5] and d.info["normalisation"]["std"] == "given"


# ---------------------------------------------------------------------------------------------- CIFAR
def test_cifar10_batches(tmp_path):
    root = _write_cifar(tmp_path / "cifar")
    d = load_data(str(root), seed=3, holdout_frac=0.25, mean=[0.0] * 3, std=[1.0] * 3)
    assert d.classes == ["class0", "class1", "class2", "class3"] and d.num_classes == 4
    assert d.in_channels == 3 and d.train.x.shape[1:] == (3, 32, 32)
    assert len(d.test) == 20  # the test_batch, untouched
    assert len(d.train) + len(d.holdout) == 80 and len(d.holdout) == 20  # 5 of each class's 20
    assert np.bincount(d.holdout.y.numpy()).tolist() == [5, 5, 5, 5]
    # layout: plane 0 is red (200), plane 1 green (100), blue row 0 is 7
    x = d.train.x * 255
    assert torch.allclose(x[:, 0], torch.full_like(x[:, 0], 200), atol=1e-3)
    assert torch.allclose(x[:, 1], torch.full_like(x[:, 1], 100), atol=1e-3)
    assert torch.allclose(x[:, 2, 0], torch.full_like(x[:, 2, 0], 7), atol=1e-3)
    assert d.info["test_source"] == "test_batch" and d.info["test_frac"] is None
    assert d.info["source"]["train_files"] == ["data_batch_1", "data_batch_2"]


def test_cifar100_layout_and_luminance(tmp_path):
    root = _write_cifar(tmp_path / "c100", cifar100=True, num_classes=3)
    d = load_data(str(root), seed=0, in_channels=1, holdout_frac=0.2)
    assert d.classes == ["class0", "class1", "class2"]
    assert d.train.x.shape[1:] == (1, 32, 32) and d.in_channels == 1
    assert "luminance" in d.info["channel_conversion"]
    raw_row = d.train.x[0, 0, 0, 0] * d.std[0] + d.mean[0]
    expected = (0.299 * 200 + 0.587 * 100 + 0.114 * 7) / 255
    assert abs(float(raw_row) - expected) < 1e-4


# ---------------------------------------------------------------------------------------------- ImageFolder
def test_image_folder_skips_corrupt_file(tmp_path, capsys):
    root, bad = _write_image_folder(tmp_path / "imgs")
    d = load_data(str(root), seed=0, store_size=16, holdout_frac=0.2, test_frac=0.2)
    err = capsys.readouterr().err
    assert str(bad) in err and "skipped 1 unreadable" in err
    assert d.info["skipped"] == 1 and d.info["skipped_files"] == [str(bad)]
    assert d.classes == ["ant", "bee", "cat"]  # sorted by folder name
    assert d.train.x.shape[1:] == (3, 16, 16)
    assert len(d.train) + len(d.holdout) + len(d.test) == 18
    for split in (d.train, d.holdout, d.test):  # every class in every split
        assert set(split.y.tolist()) == {0, 1, 2}


def test_image_folder_grayscale_default_size(tmp_path):
    root, _ = _write_image_folder(tmp_path / "imgs", corrupt=False)
    d = load_data(str(root), seed=0, in_channels=1, holdout_frac=0.2, test_frac=0.2)
    assert d.train.x.shape[1:] == (1, 32, 32) and d.info["skipped"] == 0
    assert d.info["source"]["image_mode"] == "L"


# ---------------------------------------------------------------------------------------------- npz
@pytest.mark.parametrize("layout", ["nhw", "nhwc", "nchw"])
def test_npz_layouts(tmp_path, layout):
    rng = np.random.default_rng(0)
    n = 60
    shape = {"nhw": (n, 12, 12), "nhwc": (n, 12, 12, 3), "nchw": (n, 3, 12, 12)}[layout]
    x = rng.integers(0, 256, size=shape, dtype=np.uint8)
    y = np.arange(n) % 3
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=y)
    d = load_data(str(path), seed=0, store_size=8)
    c = 1 if layout == "nhw" else 3
    assert d.train.x.shape[1:] == (c, 8, 8) and d.num_classes == 3
    assert d.info["source"]["kind"] == "npz" and len(d.info["source"]["sha256"]) == 64
    assert 0.3 < d.mean[0] < 0.7  # uint8 was scaled to [0, 1]


def test_npz_float_and_class_names(tmp_path):
    x = np.random.default_rng(0).normal(size=(40, 1, 6, 6)).astype(np.float32)
    y = np.arange(40) % 2
    path = tmp_path / "f.npz"
    np.savez(path, x=x, y=y, classes=np.array(["no", "yes"]))
    d = load_data(str(path), seed=0, in_channels=3)
    assert d.classes == ["no", "yes"] and d.train.x.shape[1:] == (3, 6, 6)


# ---------------------------------------------------------------------------------------------- bad input
def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def _bad_cases(tmp_path):
    """(spec path, kwargs) pairs that must each fail with a message naming the path."""
    cases = {}
    cases["missing"] = (tmp_path / "nope", {})
    (tmp_path / "empty").mkdir()
    cases["empty_dir"] = (tmp_path / "empty", {})
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "flat" / "a.png")
    cases["no_class_folders"] = (tmp_path / "flat", {})
    root, _ = _write_image_folder(tmp_path / "one", classes=("only",), corrupt=False)
    cases["one_class"] = (root, {})
    (tmp_path / "noimg" / "a").mkdir(parents=True)
    (tmp_path / "noimg" / "b").mkdir(parents=True)
    cases["no_images"] = (tmp_path / "noimg", {})
    root, _ = _write_image_folder(tmp_path / "few", per_class=2, corrupt=False)
    cases["too_few_samples"] = (root, {})
    x = np.zeros((30, 4, 4), np.uint8)
    cases["npz_no_y"] = (_npz(tmp_path / "noy.npz", x=x), {})
    cases["npz_lengths"] = (_npz(tmp_path / "len.npz", x=x, y=np.arange(29) % 2), {})
    cases["npz_negative_label"] = (_npz(tmp_path / "neg.npz", x=x, y=np.arange(30) % 3 - 1), {})
    cases["npz_label_over_classes"] = (
        _npz(tmp_path / "over.npz", x=x, y=np.arange(30) % 3, classes=np.array(["a", "b"])), {})
    cases["npz_missing_class"] = (_npz(tmp_path / "gap.npz", x=x, y=(np.arange(30) % 2) * 2), {})
    cases["npz_channel_axis"] = (_npz(tmp_path / "axis.npz", x=np.zeros((30, 3, 4, 4), np.uint8),
                                      y=np.arange(30) % 2), {})
    cases["npz_channels"] = (_npz(tmp_path / "ch.npz", x=np.zeros((30, 3, 8, 8), np.uint8),
                                  y=np.arange(30) % 2), {"in_channels": 2})
    (tmp_path / "plain.txt").write_text("hello")
    cases["not_npz"] = (tmp_path / "plain.txt", {})
    (tmp_path / "badcifar").mkdir()
    (tmp_path / "badcifar" / "data_batch_1").write_bytes(b"not a pickle")
    cases["corrupt_cifar"] = (tmp_path / "badcifar" / "data_batch_1", {}, tmp_path / "badcifar")
    return cases


BAD_CASES = ["missing", "empty_dir", "no_class_folders", "one_class", "no_images", "too_few_samples",
             "npz_no_y", "npz_lengths", "npz_negative_label", "npz_label_over_classes", "npz_missing_class",
             "npz_channel_axis", "npz_channels", "not_npz", "corrupt_cifar"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_raises_with_path(tmp_path, case):
    entry = _bad_cases(tmp_path)[case]
    named, kwargs = entry[0], entry[1]
    spec = entry[2] if len(entry) == 3 else named
    with pytest.raises(ScalenasError) as exc:
        load_data(str(spec), **kwargs)
    msg = str(exc.value)
    assert "\n" not in msg
    assert str(named) in msg or str(spec) in msg, msg


@pytest.mark.parametrize("kwargs, field", [
    ({"holdout_frac": 0.0}, "holdout_frac"), ({"holdout_frac": 1.2}, "holdout_frac"),
    ({"test_frac": -0.1}, "test_frac"), ({"holdout_frac": 0.5, "test_frac": 0.5}, "holdout_frac"),
    ({"mean": [0.1, 0.2]}, "mean"), ({"std": [0.0]}, "std"), ({"store_size": 0}, "store_size"),
    ({"seed": -1}, "seed"),
])
def test_bad_fields_raise(kwargs, field):
    with pytest.raises(ScalenasError, match=field):
        load_data("digits", **kwargs)


# ---------------------------------------------------------------------------------------------- batches
def test_resize_batch():
    x = torch.rand(4, 3, 8, 8)
    assert resize_batch(x, 8) is x
    assert resize_batch(x, 32).shape == (4, 3, 32, 32)
    assert resize_batch(torch.rand(2, 1, 32, 32), 12).shape == (2, 1, 12, 12)
    const = torch.full((1, 3, 32, 32), 0.7)
    assert torch.allclose(resize_batch(const, 16), const[:, :, :16, :16], atol=1e-5)
    with pytest.raises(ScalenasError, match="resolution"):
        resize_batch(x, 0)


def _small_split(n=50) -> Split:
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 4, 4).contiguous()
    return Split(x=x, y=torch.arange(n))


def test_batch_iterator_resume_equals_uninterrupted():
    split = _small_split()
    ref = BatchIterator(split, 8, seed=5)
    expected = [next(ref) for _ in range(20)]  # 6 steps/epoch, so this crosses several epochs
    it = BatchIterator(split, 8, seed=5)
    for _ in range(9):
        next(it)
    state = json.loads(json.dumps(it.state_dict()))  # must survive a JSON round trip
    assert (state["epoch"], state["position"]) == (1, 3)
    resumed = BatchIterator(split, 8, seed=5)
    resumed.load_state_dict(state)
    for k in range(9, 20):
        xb, yb = next(resumed)
        assert torch.equal(yb, expected[k][1]) and torch.equal(xb, expected[k][0])


def test_batch_iterator_epochs_and_seeds():
    split = _small_split(48)
    it = BatchIterator(split, 8, seed=0)
    assert it.steps_per_epoch == 6
    epoch0 = torch.cat([next(it)[1] for _ in range(6)])
    assert it.epoch == 1 and it.position == 0
    epoch1 = torch.cat([next(it)[1] for _ in range(6)])
    assert sorted(epoch0.tolist()) == list(range(48)) == sorted(epoch1.tolist())
    assert not torch.equal(epoch0, epoch1)
    other = torch.cat([next(BatchIterator(split, 48, seed=1))[1]])
    assert not torch.equal(other, epoch0)
    ordered = BatchIterator(split, 8, seed=0, shuffle=False)
    assert next(ordered)[1].tolist() == list(range(8))


def test_shift_augmentation_keeps_shape_and_is_seeded():
    data = load_data("digits", seed=0)
    assert data.pipeline.level == "shift" and not data.pipeline.flip  # digits: shifts, no flips
    plain, _ = next(BatchIterator(data.train, 16, seed=0))
    xb = data.pipeline.train(plain, 8, seed=3)
    assert xb.shape == plain.shape and not torch.equal(xb, plain)
    assert torch.equal(xb, data.pipeline.train(plain, 8, seed=3))
    assert not torch.equal(xb, data.pipeline.train(plain, 8, seed=4))


def test_batch_iterator_rank_sharding():
    split = _small_split(50)
    world = 3
    its = [BatchIterator(split, 4, seed=2, rank=r, world_size=world) for r in range(world)]
    assert {it.steps_per_epoch for it in its} == {4}  # 50 // 3 = 16 per rank -> 4 batches each
    seen = [torch.cat([next(it)[1] for _ in range(4)]).tolist() for it in its]
    for a in range(world):
        for b in range(a + 1, world):
            assert not set(seen[a]) & set(seen[b])
    assert sum(len(s) for s in seen) == 48
    # without drop_last every rank still gets the same number of batches
    pad = [BatchIterator(split, 4, seed=2, rank=r, world_size=world, drop_last=False) for r in range(world)]
    assert {it.steps_per_epoch for it in pad} == {5}
    assert len(set().union(*[torch.cat([next(it)[1] for _ in range(5)]).tolist() for it in pad])) == 50


def test_batch_iterator_bad_state_and_args():
    split = _small_split()
    it = BatchIterator(split, 8, seed=0)
    with pytest.raises(ScalenasError, match="batch_size"):
        BatchIterator(split, 8, seed=0, world_size=1).load_state_dict({**it.state_dict(), "batch_size": 4})
    with pytest.raises(ScalenasError, match="batch_size"):
        BatchIterator(split, 64, seed=0)
    with pytest.raises(ScalenasError, match="rank"):
        BatchIterator(split, 8, seed=0, rank=2, world_size=2)


def test_iterate_eval_in_order_no_drop():
    split = _small_split(21)
    batches = list(iterate_eval(split, 8))
    assert [len(y) for _, y in batches] == [8, 8, 5]
    assert torch.cat([y for _, y in batches]).tolist() == list(range(21))
