"""One content key for a space: caches and checks key on what a space IS, not on where its YAML lives.

A space rebuilt from the YAML stored in a checkpoint (file moved, edited or deleted; ``num_classes`` fitted to
the data) must work everywhere an equal loaded space does.
"""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import yaml

from scalenas.errors import ScalenasError
from scalenas.spaces.arch import derive_subnet, sample_subnet
from scalenas.spaces.flops import flops_params, subnet_flops_params
from scalenas.spaces.space import SPACES_DIR, load_space, space_differences, space_from_dict
from scalenas.search.strategy import built_key

DIGITS_YAML = SPACES_DIR / "digits-tiny.yaml"


def _copy(tmp_path: Path, name: str, edit=None) -> Path:
    data = yaml.safe_load(DIGITS_YAML.read_text())
    if edit is not None:
        edit(data)
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


# ------------------------------------------------------------------------------------------ (a) the key
def test_content_key_is_the_content_not_the_path(tmp_path):
    shipped = load_space("digits-tiny")
    a = load_space(str(_copy(tmp_path, "a.yaml")))
    b = load_space(str(shipped_copy := shutil.copy(DIGITS_YAML, tmp_path / "b.yml")))
    rebuilt = space_from_dict(dict(shipped.raw), "/nowhere/checkpoint.pt[space_yaml]")
    assert len({shipped.path, a.path, b.path, rebuilt.path}) == 4
    assert shipped.content_key == a.content_key == b.content_key == rebuilt.content_key
    assert len(shipped.content_key) == 64 and int(shipped.content_key, 16) >= 0  # a sha256 hex digest
    assert shipped == a == rebuilt and len({shipped, a, b, rebuilt}) == 1  # spaces compare/hash by content
    assert Path(shipped_copy).is_file()

    # YAML spelling is not content: integers for floats, defaults written out, another description
    def respell(d):
        d["scaling"][0]["depth"] = [1]
        d["in_channels"] = 1
        d["se_reduction"] = 4
        d["description"] = "the same space, written differently"
    assert load_space(str(_copy(tmp_path, "c.yaml", respell))).content_key == shipped.content_key


@pytest.mark.parametrize("edit", [
    lambda d: d.__setitem__("num_classes", 3),
    lambda d: d.__setitem__("name", "digits-renamed"),
    lambda d: d["stages"][1].__setitem__("channels", 13),
    lambda d: d["ops"]["ir_k7"].__setitem__("se", False),
    lambda d: d["scaling"][1].__setitem__("resolution", [16, 18]),
    lambda d: d.__setitem__("coupling", 1),
])
def test_content_key_changes_with_any_field(tmp_path, edit):
    shipped = load_space("digits-tiny")
    other = load_space(str(_copy(tmp_path, "edited.yaml", edit)))
    assert other.content_key != shipped.content_key and other != shipped
    assert space_differences(shipped, other)  # names what differs, one line
    assert "\n" not in space_differences(shipped, other)


def test_an_edited_yaml_is_re_read(tmp_path):
    path = _copy(tmp_path, "live.yaml")
    first = load_space(str(path))
    assert load_space(str(path)) is first  # unchanged file: the cached object
    _copy(tmp_path, "live.yaml", lambda d: d.__setitem__("num_classes", 4))
    second = load_space(str(path))
    assert second.num_classes == 4 and second.content_key != first.content_key


# ------------------------------------------------------------------------------------------ (c) the caches
def test_flops_and_built_keys_of_a_rebuilt_space_match_the_loaded_one(tmp_path):
    path = _copy(tmp_path, "gone.yaml")
    loaded = load_space(str(path))
    raw = dict(loaded.raw)
    path.unlink()  # the YAML is gone: nothing may reload it by path
    rebuilt = space_from_dict(raw, f"{tmp_path}/run/checkpoint.pt[space_yaml]")
    rng = random.Random(0)
    for _ in range(20):
        sub = sample_subnet(loaded, rng)[1]
        assert subnet_flops_params(rebuilt, sub) == subnet_flops_params(loaded, sub) \
            == flops_params(derive_subnet(rebuilt, sub))
        assert built_key(rebuilt, sub) == built_key(loaded, sub) == derive_subnet(rebuilt, sub).key()

    # num_classes fitted to the data: another space, another FLOPs entry (the classifier changes)
    fitted = space_from_dict(dict(raw, num_classes=3), f"{tmp_path}/run/checkpoint.pt[space_yaml]")
    sub = sample_subnet(loaded, random.Random(1))[1]
    assert fitted.content_key != loaded.content_key
    assert subnet_flops_params(fitted, sub) == flops_params(derive_subnet(fitted, sub))
    assert subnet_flops_params(fitted, sub) != subnet_flops_params(loaded, sub)
    assert built_key(fitted, sub) == derive_subnet(fitted, sub).key()


def test_checkpoint_space_prefers_equal_content_and_checks_content(tmp_path):
    from scalenas.models.supernet import SuperNet
    from scalenas.train.checkpoint import checkpoint_space, load_supernet, save_checkpoint

    path = _copy(tmp_path, "sp.yaml", lambda d: d.__setitem__("name", "digits-sp"))  # no shipped namesake
    space = load_space(str(path))
    payload = {"space": space.name, "space_path": str(path), "space_yaml": dict(space.raw),
               "model": SuperNet(space).state_dict()}
    assert checkpoint_space(payload) is space  # the file still holds the same content: the loaded object
    _copy(tmp_path, "sp.yaml", lambda d: d.update(name="digits-sp", num_classes=5))  # edited after training
    rebuilt = checkpoint_space(payload, "ck")
    assert rebuilt.num_classes == 10 and rebuilt.path == "ck[space_yaml]" and rebuilt == space
    path.unlink()  # deleted after training
    assert checkpoint_space(payload, "ck") == space

    ckpt = save_checkpoint(tmp_path / "checkpoint.pt", payload)
    assert load_supernet(ckpt, expect_space=space).space == space
    fitted = space_from_dict(dict(space.raw, num_classes=5), "fitted.yaml")
    with pytest.raises(ScalenasError, match=r"differs from the given fitted\.yaml: num_classes 10 vs 5") as exc:
        load_supernet(ckpt, expect_space=fitted)
    assert "\n" not in str(exc.value)
    with pytest.raises(ScalenasError, match="checkpoint of space 'digits-sp', but space 'digits-tiny' was given"):
        load_supernet(ckpt, expect_space=load_space("digits-tiny"))

    # a shipped namesake with the same content stands in for a deleted file (caches and messages line up)
    shipped = load_space("digits-tiny")
    gone = {"space": shipped.name, "space_path": str(tmp_path / "deleted.yaml"), "space_yaml": dict(shipped.raw)}
    assert checkpoint_space(gone) is shipped
    fitted_gone = dict(gone, space_yaml=dict(shipped.raw, num_classes=3))  # classes fitted to the data
    assert checkpoint_space(fitted_gone).num_classes == 3


# ------------------------------------------------------------------------------------------ (b) end to end
@pytest.mark.slow
def test_search_extrapolate_report_export_after_the_yaml_is_deleted(tmp_path, capsys):
    from scalenas.cli.main import main
    from scalenas.spaces.targets import reachable_target

    yaml_path = tmp_path / "my-moved-space.yaml"
    shutil.copy(DIGITS_YAML, yaml_path)
    space = load_space(str(yaml_path))
    run = tmp_path / "run"
    assert main(["train-supernet", "--space", str(yaml_path), "--steps", "3", "--batch-size", "16",
                 "--panel-random", "0", "--out", str(run), "--no-progress"]) == 0
    yaml_path.unlink()
    target = reachable_target(space)
    assert main(["search", "--run", str(run), "--target-flops", str(target), "--population", "4",
                 "--generations", "1", "--elites", "2", "--workers", "0", "--no-progress"]) == 0
    folder = run / "search"
    best = json.loads((folder / "best.json").read_text())
    assert best["family"], best
    assert main(["extrapolate", "--run", str(folder), "--steps", "1"]) == 0
    assert (folder / "extrapolation.json").is_file()
    assert main(["report", str(folder)]) == 0
    member = tmp_path / "member.json"
    member.write_text(best["family"][-1]["arch"])
    model = tmp_path / "member.pt"
    assert main(["export", "--supernet", str(run / "checkpoint.pt"), "--arch", str(member),
                 "--out", str(model)]) == 0
    assert model.is_file()
    assert "error" not in capsys.readouterr().err

    # The same weights under a space no file or shipped name holds any more: only the checkpoint's YAML is left,
    # so the search and the report run on the rebuilt space and every cache must key on its content.
    from scalenas.train.checkpoint import checkpoint_space, read_checkpoint, save_checkpoint

    payload = read_checkpoint(run / "checkpoint.pt")
    payload.update(space="digits-moved", space_yaml=dict(payload["space_yaml"], name="digits-moved"))
    moved = tmp_path / "moved"
    save_checkpoint(moved / "checkpoint.pt", payload)
    assert checkpoint_space(payload, "ck").path == "ck[space_yaml]"  # nothing on disk to stand in for it
    assert main(["search", "--run", str(moved), "--target-flops", str(target), "--population", "4",
                 "--generations", "1", "--elites", "2", "--workers", "0", "--no-progress"]) == 0
    assert json.loads((moved / "search" / "best.json").read_text())["space"] == "digits-moved"
    assert main(["extrapolate", "--run", str(moved / "search"), "--steps", "1"]) == 0
    assert main(["report", str(moved / "search")]) == 0
    assert "error" not in capsys.readouterr().err


def test_max_resolution_is_checked_and_left_out_of_the_key_while_unset(tmp_path):
    data = yaml.safe_load((Path(load_space("animals-tiny").path)).read_text())
    assert data["max_resolution"] == 28
    unset = {k: v for k, v in data.items() if k != "max_resolution"}
    a = space_from_dict(unset)
    assert a.max_resolution is None and "max_resolution" not in a.content()
    assert space_from_dict({**unset, "max_resolution": 56}).content_key != a.content_key
    with pytest.raises(ScalenasError, match=r"max_resolution.*largest listed resolution \(28\)"):
        space_from_dict({**unset, "max_resolution": 24})
    with pytest.raises(ScalenasError, match="max_resolution"):
        space_from_dict({**unset, "max_resolution": 0})
