"""The reader registry (recognise a path, load in memory, open lazily) and the data options nested in TrainConfig."""
from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from userdata import make_image_folder

from scalenas.data import readers
from scalenas.data.datasets import load_data
from scalenas.data.options import DataOptions
from scalenas.data.readers import READERS, InMemory, OnDisk, Reader, ReadRequest, find_reader, register
from scalenas.data.readers import imagefolder as imagefolder_reader
from scalenas.errors import ScalenasError
from scalenas.options import flat_fields
from scalenas.train.config import TrainConfig, load_job, recorded_data_options, validate


def _cifar(root: Path, n: int = 12) -> Path:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, count in (("data_batch_1", n), ("test_batch", n // 2)):
        batch = {b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8), b"labels": [i % 2 for i in range(count)]}
        (root / name).write_bytes(pickle.dumps(batch))
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"cat", b"dog"]}))
    return root


def _arrays(root: Path, n: int = 20) -> Path:
    root.mkdir(parents=True)
    np.save(root / "x.npy", np.random.default_rng(0).integers(0, 256, (n, 10, 10), dtype=np.uint8))
    np.save(root / "y.npy", np.arange(n) % 2)
    return root


def _npz(path: Path, n: int = 20) -> Path:
    np.savez(path, x=np.random.default_rng(1).integers(0, 256, (n, 10, 10), dtype=np.uint8), y=np.arange(n) % 2)
    return path


@pytest.fixture
def sources(tmp_path):
    return {"cifar": _cifar(tmp_path / "cifar"), "arrays": _arrays(tmp_path / "arrays"),
            "npz": _npz(tmp_path / "plain.npz"),
            "imagefolder": make_image_folder(tmp_path / "images", classes=3, per_class=6, size=12)}


def _request(**options) -> ReadRequest:
    return ReadRequest(DataOptions(**options), in_channels=None)


def test_the_registry_holds_one_reader_per_kind_in_recognition_order():
    assert list(READERS) == ["digits", "animals", "cifar", "arrays", "npz", "imagefolder"]
    assert all(isinstance(r, Reader) and r.load is not None for r in READERS.values())
    assert READERS["digits"].recognise is None and READERS["digits"].open is None  # named and memory only


def test_each_path_is_recognised_by_its_reader(sources, tmp_path):
    for kind, path in sources.items():
        reader, found = find_reader(str(path))
        assert (reader.name, found) == (kind, path)
    assert find_reader("digits") == (READERS["digits"], None)
    folder = make_image_folder(tmp_path / "digits", classes=2, per_class=3, size=8)
    assert find_reader("digits")[0].name == "digits"  # the name wins
    assert find_reader(str(folder))[0].name == "imagefolder"
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    for spec, problem in ((tmp_path / "nope", "does not exist"), (tmp_path / "empty", "directory is empty"),
                          (tmp_path / "notes.txt", "not a directory or a .npz file")):
        with pytest.raises(ScalenasError, match=problem):
            find_reader(str(spec))


def test_each_reader_loads_into_memory(sources):
    for kind, path in sources.items():
        got = READERS[kind].load(path, _request())
        assert isinstance(got, InMemory) and got.x.dtype == torch.float32 and got.x.ndim == 4
        assert len(got.x) == len(got.y) and got.source["kind"] == kind and float(got.x.max()) <= 1.0
    cifar = READERS["cifar"].load(sources["cifar"], _request())
    assert cifar.classes == ["cat", "dog"] and len(cifar.test_y) == 6  # the test batch is the test split
    images = READERS["imagefolder"].load(sources["imagefolder"], _request(store_size=8))
    assert tuple(images.x.shape) == (18, 1, 8, 8) and images.file_list["format"] == "scalenas-files/1"
    digits = READERS["digits"].load(None, _request())
    assert tuple(digits.x.shape) == (1797, 1, 8, 8) and digits.classes == [str(i) for i in range(10)]


def test_each_lazy_reader_opens_without_decoding_and_decodes_a_batch_on_demand(sources):
    for kind in ("cifar", "arrays", "npz", "imagefolder"):
        got = READERS[kind].open(sources[kind], _request())
        assert isinstance(got, OnDisk) and len(got.train) > 0
        x, y, bad = got.train.__getitems__([0, 1])
        assert x.shape[0] == 2 and x.dtype == torch.uint8 and y.tolist() == [int(v) for v in y] and bad.tolist() \
            == [-1, -1]
    assert READERS["cifar"].open(sources["cifar"], _request()).test is not None


def test_source_picks_load_or_open_and_auto_asks_the_reader(sources):
    read = lambda kind, **o: READERS[kind].read(sources[kind], _request(**o))  # noqa: E731
    assert isinstance(read("npz"), InMemory) and isinstance(read("npz", source="stream"), OnDisk)
    assert isinstance(read("arrays"), OnDisk) and isinstance(read("arrays", source="memory"), InMemory)
    assert isinstance(read("cifar"), InMemory) and isinstance(read("cifar", source="stream"), OnDisk)
    assert isinstance(read("imagefolder"), InMemory)
    assert isinstance(read("imagefolder", memory_limit_mb=1, store_size=512), OnDisk)  # above the limit: streams
    assert isinstance(READERS["digits"].read(None, _request(source="stream")), InMemory)  # memory only


def test_an_image_folder_is_scanned_once_per_load(sources, monkeypatch):
    calls = []
    real = imagefolder_reader.load_file_lists
    monkeypatch.setattr(imagefolder_reader, "load_file_lists", lambda *a: calls.append(a) or real(*a))
    READERS["imagefolder"].read(sources["imagefolder"], _request(memory_limit_mb=1, store_size=512))
    assert len(calls) == 1  # the auto choice and the opening share one scan


@pytest.fixture
def marked_reader():
    """A user's reader for directories holding ``MARK``: registered before the ImageFolder catch-all."""
    def load(path, request):
        n = 16
        return InMemory(x=torch.linspace(0, 1, n * 16).reshape(n, 1, 4, 4), y=np.arange(n) % 2, classes=["a", "b"],
                        source={"kind": "marked", "path": str(path)})

    reader = register(Reader("marked", load=load, recognise=lambda p: (p / "MARK").is_file()), before="imagefolder")
    yield reader
    READERS.pop("marked")


def test_a_registered_reader_is_asked_before_the_catch_all_and_feeds_load_data(marked_reader, tmp_path):
    assert list(readers.READERS)[-2:] == ["marked", "imagefolder"]
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "MARK").write_text("")
    data = load_data(str(tmp_path / "m"), seed=0, holdout_frac=0.25, test_frac=0.25)
    assert data.info["source"]["kind"] == "marked" and sum(data.info["sizes"].values()) == 16
    with pytest.raises(KeyError, match="no reader named"):
        register(Reader("other", load=marked_reader.load), before="nothing")


# ------------------------------------------------------------------------------------------ DataOptions in TrainConfig
def test_train_config_nests_data_options_with_flat_keys_on_disk_and_in_flags():
    cfg = load_job("digits", {"holdout_frac": 0.2, "store_size": 12})
    assert isinstance(cfg.data_options, DataOptions)
    assert cfg.data_options.holdout_frac == cfg.holdout_frac == 0.2 and cfg.store_size == 12
    flat = cfg.to_dict()
    assert "data_options" not in flat and list(flat)[:3] == ["space", "data", "data_seed"]
    assert [f.name for f in flat_fields(TrainConfig)] == list(flat)
    assert TrainConfig.from_dict(flat) == cfg
    with pytest.raises(TypeError):
        TrainConfig.from_dict({**flat, "no_such_key": 1})
    copy = dataclasses.replace(cfg, steps=5)
    copy.holdout_frac = 0.3
    assert cfg.holdout_frac == 0.2  # each config owns its data options
    with pytest.raises(ScalenasError, match="--holdout-frac: must be >= 0 and < 1"):
        load_job("digits", {"holdout_frac": 1.5})
    copy.holdout_frac = 1.5
    with pytest.raises(ScalenasError, match="config: holdout_frac: must be >= 0 and < 1"):
        validate(copy)  # the nested options are validated with the rest


def test_load_data_takes_the_options_whole():
    cfg = load_job("digits", {"seed": 3})
    whole = load_data(cfg.data_options, seed=cfg.seed)
    keywords = load_data("digits", seed=3, holdout_frac=cfg.holdout_frac, test_frac=cfg.test_frac)
    assert whole.info["indices"] == keywords.info["indices"]
    recorded = recorded_data_options({**cfg.to_dict(), "rescan_data": True})  # a checkpoint's config record
    assert recorded.data_seed == 3 and recorded.rescan_data is False
    assert load_data(recorded).info["indices"] == whole.info["indices"]
    with pytest.raises(ScalenasError, match="source"):
        load_data(dataclasses.replace(cfg.data_options, source="disk"))
