"""The embedded animals dataset (animal-mnist 0.4, MIT), its converter and the animals-tiny space. No training."""
from __future__ import annotations

import base64
import gzip
import hashlib
import importlib.util
import json
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from scalenas.data import animals
from scalenas.data.animals import animals_file, load_animals
from scalenas.errors import ScalenasError
from scalenas.spaces.space import load_space

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]


def _converter():
    spec = importlib.util.spec_from_file_location("convert_animals", ROOT / "jobs" / "data" / "convert_animals.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _copy_shipped(tmp_path: Path) -> Path:
    """A private copy of the shipped npz and its provenance (the shipped files are never edited)."""
    src = animals_file()
    dst = tmp_path / "animals.npz"
    shutil.copyfile(src, dst)
    shutil.copyfile(src.with_name("animals_provenance.json"), tmp_path / "animals_provenance.json")
    return dst


def _set_provenance_sha(npz: Path) -> None:
    prov = npz.with_name("animals_provenance.json")
    rec = json.loads(prov.read_text())
    rec["npz"]["sha256"] = hashlib.sha256(npz.read_bytes()).hexdigest()
    prov.write_text(json.dumps(rec))


# ------------------------------------------------------------------------------------------ shipped data
def test_shipped_npz_loads():
    x, y, classes, source = load_animals()
    assert x.shape == (10_000, 1, 28, 28) and x.dtype == np.uint8
    assert y.shape == (10_000,) and y.dtype == np.int64
    assert classes == CLASSES
    assert np.bincount(y, minlength=10).tolist() == [1000] * 10
    assert 0 < x.mean() < 255 and x.max() == 255  # real images, not blank
    assert source["kind"] == "animals" and source["package"] == "animal-mnist 0.4 (MIT)"
    assert Path(source["path"]) == animals_file()


def test_shipped_sha_matches_provenance_and_licence_ships():
    path = animals_file()
    prov = json.loads(path.with_name("animals_provenance.json").read_text())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert prov["npz"]["sha256"] == digest == load_animals()[3]["sha256"]
    assert (prov["package"], prov["version"], prov["license"]) == ("animal-mnist", "0.4", "MIT")
    assert prov["classes"] == CLASSES and prov["total"] == 10_000
    assert "MIT License" in path.with_name("animals_LICENSE.txt").read_text()
    with np.load(path, allow_pickle=False) as z:  # no object arrays
        assert sorted(z.files) == ["classes", "x", "y"]
        for k in z.files:
            assert hashlib.sha256(np.ascontiguousarray(z[k]).tobytes()).hexdigest() == prov["arrays"][k]["sha256"]


# ------------------------------------------------------------------------------------------ bad files
def test_missing_file_names_it(tmp_path, monkeypatch):
    gone = tmp_path / "animals.npz"
    monkeypatch.setattr(animals, "animals_file", lambda: gone)
    with pytest.raises(ScalenasError) as ei:
        load_animals()
    msg = str(ei.value)
    assert str(gone) in msg and "missing" in msg and "\n" not in msg


def test_corrupt_copy_fails_the_sha_check(tmp_path):
    npz = _copy_shipped(tmp_path)
    data = bytearray(npz.read_bytes())
    data[len(data) // 2] ^= 0xFF
    npz.write_bytes(bytes(data))
    with pytest.raises(ScalenasError, match="sha256 .* does not match") as ei:
        load_animals(npz)
    assert str(npz) in str(ei.value) and "\n" not in str(ei.value)


def test_corrupt_copy_with_matching_sha_is_unreadable(tmp_path):
    npz = _copy_shipped(tmp_path)
    npz.write_bytes(npz.read_bytes()[:100_000])  # truncated zip
    _set_provenance_sha(npz)
    with pytest.raises(ScalenasError, match="not a readable npz") as ei:
        load_animals(npz)
    assert str(npz) in str(ei.value) and "\n" not in str(ei.value)


@pytest.mark.parametrize("arrays, problem", [
    ({"x": np.zeros((4, 28, 28), np.float32), "y": np.zeros(4, np.int64), "classes": np.array(["a"])}, "x must be"),
    ({"x": np.zeros((4, 28, 28), np.uint8), "y": np.zeros(3, np.int64), "classes": np.array(["a"])}, "y must be"),
    ({"x": np.zeros((4, 28, 28), np.uint8), "y": np.full(4, 2, np.int64), "classes": np.array(["a"])}, "labels must"),
    ({"x": np.zeros((4, 28, 28), np.uint8), "y": np.zeros(4, np.int64)}, "not a readable npz"),
])
def test_wrong_arrays_are_refused(tmp_path, arrays, problem):
    npz = _copy_shipped(tmp_path)
    np.savez_compressed(npz, **arrays)
    _set_provenance_sha(npz)
    with pytest.raises(ScalenasError, match=problem):
        load_animals(npz)


def test_missing_provenance_is_refused(tmp_path):
    npz = _copy_shipped(tmp_path)
    npz.with_name("animals_provenance.json").unlink()
    with pytest.raises(ScalenasError, match="provenance"):
        load_animals(npz)


# ------------------------------------------------------------------------------------------ converter
class _Evil:
    def __reduce__(self):
        return (os.system, ("echo should-never-run",))


def test_restricted_unpickler_refuses_other_globals():
    conv = _converter()
    payload = pickle.dumps(_Evil(), protocol=4)  # pickling only references os.system; nothing runs
    assert b"system" in payload
    with pytest.raises(pickle.UnpicklingError, match="system is not allowed"):
        conv.restricted_loads(payload)
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        conv.restricted_loads(pickle.dumps(_Evil))  # a class global (this test module) is refused too


def test_restricted_unpickler_admits_numpy_arrays():
    conv = _converter()
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for proto in (2, 4):  # what numpy writes with _reconstruct (the package uses 4); 5 would need _frombuffer
        assert np.array_equal(conv.restricted_loads(pickle.dumps(a, protocol=proto)), a)
    assert conv.restricted_loads(pickle.dumps(np.array([1, 2], np.int64))).dtype == np.int64


def _fake_wheel(path: Path, x: np.ndarray, y: np.ndarray, data_pickle: bytes | None = None) -> Path:
    conv = _converter()
    files = {
        conv.DATA_MEMBER: gzip.compress(data_pickle if data_pickle is not None else pickle.dumps(x, protocol=4)),
        conv.LABEL_MEMBER: gzip.compress(pickle.dumps(y, protocol=4)),
        conv.LICENSE_MEMBER: b"MIT License\n\nCopyright (c) 2025 Someone\n",
        conv.METADATA_MEMBER: b"Metadata-Version: 2.4\nName: animal_mnist\nVersion: 0.4\nLicense: MIT\n",
    }
    record = "".join(f"{m},sha256={base64.urlsafe_b64encode(hashlib.sha256(b).digest()).rstrip(b'=').decode()},"
                     f"{len(b)}\n" for m, b in files.items())
    with zipfile.ZipFile(path, "w") as z:
        for m, b in files.items():
            z.writestr(m, b)
        z.writestr(conv.RECORD_MEMBER, record + f"{conv.RECORD_MEMBER},,\n")
    return path


def test_converter_end_to_end_on_a_fake_wheel(tmp_path):
    y = np.repeat(np.arange(10, dtype=np.int64), 1000)
    x = (np.arange(10_000 * 28 * 28) % 251).astype(np.uint8).reshape(10_000, 28, 28)
    wheel = _fake_wheel(tmp_path / "animal_mnist-0.4-py3-none-any.whl", x, y)
    out = tmp_path / "pkg" / "animals.npz"
    assert _converter().main(["--wheel", str(wheel), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["animals.npz", "animals_LICENSE.txt",
                                                            "animals_provenance.json"]  # no temp files left
    gx, gy, classes, source = load_animals(out)
    assert np.array_equal(gx[:, 0], x) and np.array_equal(gy, y) and classes == CLASSES
    prov = json.loads((out.parent / "animals_provenance.json").read_text())
    assert prov["npz"]["sha256"] == source["sha256"]
    assert prov["wheel"]["sha256"] == hashlib.sha256(wheel.read_bytes()).hexdigest()


def test_converter_refuses_a_malicious_wheel(tmp_path):
    y = np.repeat(np.arange(10, dtype=np.int64), 1000)
    wheel = _fake_wheel(tmp_path / "w.whl", None, y, data_pickle=pickle.dumps(_Evil(), protocol=4))
    out = tmp_path / "animals.npz"
    with pytest.raises(SystemExit, match="not allowed"):
        _converter().main(["--wheel", str(wheel), "--out", str(out)])
    assert not out.exists()


# ------------------------------------------------------------------------------------------ space
def test_animals_tiny_space_fits_the_native_28px():
    sp = load_space("animals-tiny")
    assert (sp.in_channels, sp.num_classes) == (1, 10)
    resolutions = [r for sc in sp.scaling for r in sc.resolution]
    assert max(resolutions) == 28 and min(resolutions) == sp.base_resolution == 16
    assert all(r % sp.resolution_step == 0 for r in resolutions)
