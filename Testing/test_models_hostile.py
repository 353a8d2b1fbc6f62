"""Hostile model packages (issue 18, Models): each is refused with one line and never replaces a working model."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch
from torch import nn

from MedDLLib import models
from MedDLLib.cli import main
from MedDLLib.errors import ModelError


class _Tiny(nn.Module):
    def __init__(self, in_channels: int = 3, n_classes: int = 6, width: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, padding=1)
        self.head = nn.Linear(width, n_classes)

    def forward(self, x):
        return self.head(self.conv(x).mean(dim=(2, 3)))


models.register_network("test.hostile.tiny", _Tiny)


def _metadata(**over) -> dict:
    meta = {
        "task": "ich", "version": "1.0.0", "recipe": "improved",
        "network": {"name": "test.hostile.tiny", "args": {"in_channels": 3, "n_classes": 6, "width": 4}},
        "input": {"channels": ["brain", "subdural", "bone"], "size": 32},
        "output": {"labels": ["any", "a", "b", "c", "d", "e"], "gradcam_layer": "conv"},
        "training_data": {"kind": "synthetic", "n_studies": 1, "description": "test"},
        "metrics": {},
    }
    meta.update(over)
    return meta


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MEDDL_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def good(tmp_path) -> Path:
    torch.manual_seed(0)
    return models.save_package(tmp_path / "good" / "ich-model", _Tiny(), _metadata())


def _tamper_metadata(package: Path, edit) -> Path:
    """Change the metadata as a hostile author would (the weights' sha256 stays right)."""
    file = package / models.METADATA_FILE
    meta = json.loads(file.read_text())
    edit(meta)
    file.write_text(json.dumps(meta))
    return package


def _one_line_error(argv: list[str], capsys) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("network", ["os.system", "builtins.eval", "NoSuchNet"])
def test_unknown_network_is_refused_at_import_and_verify(network, good, home, capsys):
    _tamper_metadata(good, lambda m: m["network"].update(name=network))
    err = _one_line_error(["models", "import", str(good)], capsys)
    assert f"unknown network {network!r}" in err
    err = _one_line_error(["models", "verify", str(good)], capsys)
    assert f"unknown network {network!r}" in err and "not checked" not in err
    assert not (home / "models" / "ich-model").exists()


def test_overwrite_with_a_bad_package_keeps_the_working_model(good, tmp_path, home, capsys):
    assert main(["models", "import", str(good)]) == 0
    installed = home / "models" / "ich-model"
    before = (installed / models.WEIGHTS_FILE).read_bytes(), (installed / models.METADATA_FILE).read_bytes()
    bad = models.save_package(tmp_path / "bad" / "ich-model", _Tiny(), _metadata())
    _tamper_metadata(bad, lambda m: m["network"].update(name="os.system"))
    err = _one_line_error(["models", "import", str(bad), "--overwrite"], capsys)
    assert "unknown network 'os.system'" in err and "already in the cache is kept" in err
    assert ((installed / models.WEIGHTS_FILE).read_bytes(), (installed / models.METADATA_FILE).read_bytes()) == before
    assert models.verify_model("ich-model")["name"] == "ich-model"


def test_weights_linked_to_dev_zero_are_refused_unread(good, home, capsys):
    weights = good / models.WEIGHTS_FILE
    weights.unlink()
    os.symlink("/dev/zero", weights)
    err = _one_line_error(["models", "import", str(good)], capsys)
    assert "symbolic link pointing out of the package" in err and "/dev/zero" in err
    err = _one_line_error(["models", "verify", str(good)], capsys)  # in place: refused before hashing
    assert "is a symbolic link" in err
    assert not (home / "models" / "ich-model").exists()


def test_symlink_out_of_the_package_is_refused(good, tmp_path, home, capsys):
    outside = tmp_path / "secret.bin"
    outside.write_bytes(b"x" * 1000)
    os.symlink(outside, good / "configs" / "extra.bin")
    err = _one_line_error(["models", "import", str(good)], capsys)
    assert "configs/extra.bin is a symbolic link pointing out of the package" in err
    staged = [p for p in (home / "models").iterdir()]
    assert staged == []  # nothing copied, no staging folder left


def test_symlink_inside_the_package_is_copied_as_a_file(good, home):
    (good / "docs").mkdir()
    (good / "docs" / "README.md").write_text("card")
    os.symlink(good / "docs" / "README.md", good / "README.md")
    dest = models.import_model(good)
    assert (dest / "README.md").read_text() == "card" and not (dest / "README.md").is_symlink()


def test_weights_that_are_a_pipe_are_refused(good, home, capsys):
    weights = good / models.WEIGHTS_FILE
    weights.unlink()
    os.mkfifo(weights)
    err = _one_line_error(["models", "import", str(good)], capsys)
    assert "not a regular file" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root deletes read-only folders")
def test_remove_that_cannot_delete_says_so(good, home, capsys):
    dest = models.import_model(good)
    (dest / "models").chmod(stat.S_IRUSR | stat.S_IXUSR)  # the weights cannot be unlinked
    try:
        err = _one_line_error(["models", "remove", "ich-model"], capsys)
        assert "cannot remove model 'ich-model'" in err and "delete it by hand" in err
    finally:
        for folder in (home / "models").rglob("models"):
            folder.chmod(stat.S_IRWXU)


def test_remove_that_cannot_delete_says_so_as_root(good, home, capsys, monkeypatch):
    """Where the test runs as root a read-only folder can be deleted: make unlink fail instead."""
    dest = models.import_model(good)
    real_unlink = os.unlink

    def refuse(path, *args, **kwargs):
        if str(path).endswith("model.pt") or "model.pt" in str(kwargs.get("dir_fd", "")):
            raise PermissionError(13, "Permission denied", str(path))
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", refuse)
    err = _one_line_error(["models", "remove", "ich-model"], capsys)
    assert "cannot remove model 'ich-model' completely" in err and "Permission denied" in err
    monkeypatch.setattr(os, "unlink", real_unlink)
    left = [p for p in (home / "models").iterdir() if p.name.startswith(".removing-ich-model")]
    assert len(left) == 1 and str(left[0]) in err and (left[0] / models.WEIGHTS_FILE).is_file()
    assert not dest.exists() and "ich-model" not in [m["name"] for m in models.list_models()]


@pytest.mark.parametrize("args, expected", [
    ({"in_channels": 3, "n_classes": 6, "width": 10 ** 6},
     r"first mismatching key 'conv.weight': shape \[4, 3, 3, 3\]"),
    ({"in_channels": 3, "n_classes": 6, "width": -3}, "cannot build network"),
])
def test_hostile_network_widths_are_refused_with_one_line(args, expected, good, home, capsys):
    _tamper_metadata(good, lambda m: m["network"].update(args=args))
    err = _one_line_error(["models", "import", str(good)], capsys)
    assert pytest.importorskip("re").search(expected, err), err
    err = _one_line_error(["models", "verify", str(good)], capsys)
    assert pytest.importorskip("re").search(expected, err), err


def test_monai_network_of_huge_width_is_refused_without_allocating(home):
    meta = _metadata(network={"name": "monai.networks.nets.BasicUNet",
                              "args": {"spatial_dims": 3, "in_channels": 1, "out_channels": 1,
                                       "features": [10 ** 6, 10 ** 6, 10 ** 6, 10 ** 6, 10 ** 6, 10 ** 6]}})
    with pytest.raises(ModelError, match=r"parameters \(more than MedDL's limit"):
        models.build_network(meta)


@pytest.mark.parametrize("key, value", [("size", 100000), ("size", [64, 100000]), ("size", -1), ("depth", 10 ** 9)])
def test_huge_input_sizes_are_refused(key, value, good, home, capsys):
    _tamper_metadata(good, lambda m: m["input"].update({key: value}))
    err = _one_line_error(["models", "import", str(good)], capsys)
    assert f"input.{key} must be whole numbers from 1 to 2048" in err


def test_gradcam_layer_that_does_not_exist_is_refused(good, home, capsys):
    _tamper_metadata(good, lambda m: m["output"].update(gradcam_layer="layer99"))
    err = _one_line_error(["models", "import", str(good)], capsys)
    assert "output.gradcam_layer 'layer99' is not a layer" in err and "conv" in err
    err = _one_line_error(["models", "verify", str(good)], capsys)
    assert "gradcam_layer" in err


def test_deeply_nested_metadata_is_refused(good, home, capsys):
    (good / models.METADATA_FILE).write_text("[" * 100000 + "]" * 100000)
    err = _one_line_error(["models", "import", str(good)], capsys)
    assert "nests brackets 100000 deep" in err
    err = _one_line_error(["models", "verify", str(good)], capsys)
    assert "nests brackets" in err


def test_raw_pickle_weights_get_meddl_sentence(good, tmp_path, home, capsys):
    marker = tmp_path / "ran"
    payload = (b"\x80\x04\x95" + b"\x00" * 8 + b"\x8c\x02os\x94\x8c\x06system\x94\x93\x94\x8c"
               + bytes([len(f"touch {marker}")]) + f"touch {marker}".encode() + b"\x94\x85\x94R\x94.")
    (good / models.WEIGHTS_FILE).write_bytes(payload)
    import hashlib

    _tamper_metadata(good, lambda m: m.update(sha256=hashlib.sha256(payload).hexdigest()))
    err = _one_line_error(["models", "import", str(good)], capsys)
    assert models.PICKLE_REFUSAL in err and not marker.exists()
