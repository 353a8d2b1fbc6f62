"""Model packages: atomic save, verified load (sha256 first, weights only), network registry, cache and CLI."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from MedDLLib import cli, models
from MedDLLib.errors import InputError, ModelError


class _Tiny(nn.Module):
    def __init__(self, in_channels: int = 1, n_classes: int = 2):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)  # buffers (running stats, num_batches_tracked) are saved too
        self.head = nn.Linear(4, n_classes)

    def forward(self, x):
        return self.head(self.norm(self.conv(x)).mean(dim=(2, 3)))


models.register_network("test.tiny", _Tiny)


def _metadata(**over) -> dict:
    meta = {
        "task": "ich",
        "version": "1.0.0",
        "recipe": "improved",
        "network": {"name": "test.tiny", "args": {"in_channels": 3, "n_classes": 6}},
        "input": {"channels": ["brain", "subdural", "bone"], "windows": [[40, 80], [80, 200], [600, 2800]],
                  "size": [64, 64]},
        "output": {"labels": ["any", "epidural", "intraparenchymal", "intraventricular", "subarachnoid",
                              "subdural"]},
        "training_data": {"kind": "synthetic", "n_studies": 12, "description": "meddl phantom ich --cases 12"},
        "metrics": {"weighted_log_loss": 0.31, "auroc_any": {"value": 0.9, "ci95": [0.8, 0.97]}},
    }
    meta.update(over)
    return meta


def _trained_tiny(seed=0) -> _Tiny:
    torch.manual_seed(seed)
    model = _Tiny(3, 6)
    model.train()
    model(torch.randn(4, 3, 8, 8))  # moves the BatchNorm running statistics away from their defaults
    return model.eval()


@pytest.fixture
def package(tmp_path) -> Path:
    return models.save_package(tmp_path / "ich-tiny", _trained_tiny().state_dict(), _metadata())


def _rewrite_weights(package: Path, obj) -> None:
    """Replace model.pt with ``obj`` and write its correct sha256, as a careful attacker would."""
    weights = package / models.WEIGHTS_FILE
    torch.save(obj, weights)
    meta_file = package / models.METADATA_FILE
    meta = json.loads(meta_file.read_text())
    meta["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    meta_file.write_text(json.dumps(meta))


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------------------------------- save and load
def test_save_and_load_round_trip(tmp_path, package):
    model = _trained_tiny()
    meta = json.loads((package / models.METADATA_FILE).read_text())
    assert meta["sha256"] == hashlib.sha256((package / models.WEIGHTS_FILE).read_bytes()).hexdigest()
    assert meta["format"] == models.FORMAT
    assert meta["libraries"]["torch"] == torch.__version__
    assert {"monai", "meddl", "numpy", "python"} <= set(meta["libraries"])
    assert meta["created"].startswith("20") and meta["training_data"]["kind"] == "synthetic"

    loaded = models.load_package(package)
    assert loaded.path == package and loaded.name == "ich-tiny" and loaded.task == "ich"
    assert loaded.labels[0] == "any"
    assert loaded.state_dict.keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict[key], value)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(loaded.network()(x), model(x))
    assert not loaded.network().training
    assert _leftovers(tmp_path) == []


def test_load_task_model_checks_the_task(package):
    network, loaded = models.load_task_model(str(package), "ich")
    assert loaded.task == "ich" and not network.training
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(network(x), _trained_tiny()(x))
    assert models.load_task_model(loaded, "ich")[1] is loaded  # an already loaded package is used as it is
    with pytest.raises(InputError, match="model 'ich-tiny' is for task 'ich', not 'lgg'"):
        models.load_task_model(package, "lgg")


def test_save_converts_numpy_and_nan_metrics(tmp_path):
    import numpy as np

    meta = _metadata(metrics={"auroc": np.float32(0.75), "ci": np.array([0.6, 0.9]), "c_index": float("nan")},
                     training_data={"kind": "real", "n_studies": np.int64(61), "description": "TCIA"})
    path = models.save_package(tmp_path / "m", _trained_tiny().state_dict(), meta)
    saved = json.loads((path / models.METADATA_FILE).read_text())
    assert saved["metrics"] == {"auroc": 0.75, "ci": [0.6, 0.9], "c_index": None}
    assert saved["training_data"]["n_studies"] == 61


def test_save_accepts_a_module_and_replaces_an_existing_package(tmp_path, package):
    first = json.loads((package / models.METADATA_FILE).read_text())["sha256"]
    models.save_package(package, _trained_tiny(seed=1), _metadata(version="1.1.0"))
    second = models.load_package(package)
    assert second.metadata["version"] == "1.1.0" and second.metadata["sha256"] != first
    assert torch.equal(second.state_dict["conv.weight"], _trained_tiny(seed=1).conv.weight)
    assert _leftovers(tmp_path) == []


def test_save_never_leaves_a_half_written_package(tmp_path, package, monkeypatch):
    before = (package / models.WEIGHTS_FILE).read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(models.package, "write_json", crash)  # dies after the new weights were written
    with pytest.raises(OSError, match="disk full"):
        models.save_package(package, _trained_tiny(seed=2).state_dict(), _metadata())
    assert (package / models.WEIGHTS_FILE).read_bytes() == before  # the old package is intact
    models.load_package(package)
    assert _leftovers(tmp_path) == []  # no temporary folder left behind


def test_save_refuses_to_replace_a_folder_that_is_not_a_package(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    with pytest.raises(ModelError, match="not a model package; refusing to replace it"):
        models.save_package(folder, _trained_tiny().state_dict(), _metadata())
    assert (folder / "keep.txt").read_text() == "mine"


def test_save_rejects_weights_that_do_not_fit_the_network(tmp_path):
    state = _trained_tiny().state_dict()
    with pytest.raises(ModelError, match="do not fit network 'test.tiny'"):
        models.save_package(tmp_path / "m", state, _metadata(network={"name": "test.tiny",
                                                                      "args": {"in_channels": 1}}))
    del state["head.bias"]
    with pytest.raises(ModelError, match="do not fit network"):
        models.save_package(tmp_path / "m", state, _metadata())
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m.pop("task"), "missing key 'task'"),
        (lambda m: m["training_data"].pop("kind"), "missing key 'training_data.kind'"),
        (lambda m: m["network"].pop("args"), "missing key 'network.args'"),
        (lambda m: m["output"].pop("labels"), "missing key 'output.labels'"),
        (lambda m: m.update(version=1), "key 'version' must be str"),
        (lambda m: m["training_data"].update(kind="imaginary"), "training_data.kind must be one of"),
        (lambda m: m["training_data"].update(n_studies=True), "'training_data.n_studies' must be int"),
    ],
)
def test_metadata_schema_errors_name_the_key(tmp_path, package, change, message):
    meta = _metadata()
    change(meta)
    with pytest.raises(ModelError, match=message):
        models.save_package(tmp_path / "new", _trained_tiny().state_dict(), meta)
    saved = json.loads((package / models.METADATA_FILE).read_text())
    change(saved)
    (package / models.METADATA_FILE).write_text(json.dumps(saved))
    with pytest.raises(ModelError, match=message):
        models.load_package(package)


def test_load_rejects_other_formats_and_bad_json(package):
    meta_file = package / models.METADATA_FILE
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "format": "meddl-model/2"}))
    with pytest.raises(ModelError, match="newer MedDL"):
        models.load_package(package)
    meta_file.write_text("{not json")
    with pytest.raises(ModelError, match="metadata.json is not valid JSON"):
        models.load_package(package)


# -------------------------------------------------------------------------------------- tampering and pickles
def test_tampered_weights_are_refused_before_torch_load(package, monkeypatch):
    weights = package / models.WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))

    def must_not_run(*args, **kwargs):
        raise AssertionError("torch.load called before the sha256 check")

    monkeypatch.setattr(torch, "load", must_not_run)
    expected = f"weights of {package} do not match the sha256 in metadata.json (tampered or corrupt)"
    with pytest.raises(ModelError) as info:
        models.load_package(package)
    assert str(info.value) == expected
    with pytest.raises(ModelError, match="tampered or corrupt"):
        models.verify_model(package)


class _Payload:
    """Unpickling this object runs ``open(marker, "w")``: a stand-in for arbitrary code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_checkpoint_with_pickled_object_is_refused_without_running_it(tmp_path, package):
    marker = tmp_path / "payload-ran"
    _rewrite_weights(package, {"conv.weight": torch.zeros(1), "evil": _Payload(marker)})
    with pytest.raises(ModelError, match="holds pickled Python objects.*MedDL refused it without running any of it.*io.open"):
        models.load_package(package)
    with pytest.raises(ModelError, match="pickled Python objects"):
        models.verify_model(package)
    assert not marker.exists()
    # the payload is live: an unsafe load would have run it
    torch.load(package / models.WEIGHTS_FILE, weights_only=False)
    assert marker.exists()


def test_checkpoint_that_is_not_a_state_dict_is_refused(package):
    _rewrite_weights(package, [torch.zeros(3)])
    with pytest.raises(ModelError, match="is not a state dict"):
        models.load_package(package)
    (package / models.WEIGHTS_FILE).write_bytes(b"not a checkpoint")
    meta = json.loads((package / models.METADATA_FILE).read_text())
    meta["sha256"] = hashlib.sha256(b"not a checkpoint").hexdigest()
    (package / models.METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="not a readable torch checkpoint") as info:
        models.load_package(package)
    assert "pickled Python objects" not in str(info.value)


def test_missing_weights_file(package):
    (package / models.WEIGHTS_FILE).unlink()
    with pytest.raises(ModelError, match="models/model.pt is missing"):
        models.load_package(package)


# ------------------------------------------------------------------------------------------------- networks
def test_build_monai_networks_by_dotted_and_short_name():
    spec = {"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "features": [4, 4, 8, 8, 16, 4]}
    from MedDLLib.models.nets import BasicUNet  # MedDL's mirror of MONAI's class (Testing/test_nets_mirror.py)

    for name in ("monai.networks.nets.BasicUNet", "BasicUNet"):
        net = models.build_network({"network": {"name": name, "args": spec}})
        assert isinstance(net, BasicUNet)
        assert net(torch.zeros(1, 1, 32, 32)).shape == (1, 2, 32, 32)


def test_pretrained_is_forced_off(monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    net = models.build_network({"network": {"name": "FlexibleUNet", "args": {
        "in_channels": 3, "out_channels": 1, "backbone": "efficientnet-b0", "pretrained": True,
        "spatial_dims": 2, "decoder_channels": [8, 8, 8, 8, 8]}}}).eval()
    assert net(torch.zeros(1, 3, 32, 32)).shape == (1, 1, 32, 32)


def test_unknown_or_unsafe_network_names_are_refused():
    for name in ("os.system", "monai.networks.nets.ViT", "builtins.eval", "nope"):
        with pytest.raises(ModelError, match=f"unknown network '{name}'.*test.tiny"):
            models.build_network({"task": "ich", "network": {"name": name, "args": {}}})
    with pytest.raises(ModelError, match="cannot build network 'test.tiny' with args"):
        models.build_network({"network": {"name": "test.tiny", "args": {"depth": 3}}})
    with pytest.raises(ValueError):
        models.register_network("monai.mine", _Tiny)


# ---------------------------------------------------------------------------------------------------- cache
def test_cache_dir_follows_meddl_home_and_defaults_to_home(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDDL_HOME", str(tmp_path / "custom"))
    assert models.cache_dir() == (tmp_path / "custom" / "models").resolve()
    assert models.cache_dir().is_dir()
    monkeypatch.delenv("MEDDL_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert models.cache_dir() == (tmp_path / "home" / ".meddl" / "models").resolve()


def test_import_list_verify_remove_from_folder(package):
    assert models.list_models() == []
    dest = models.import_model(package)
    assert dest == models.cache_dir() / "ich-tiny"
    listed = models.list_models()
    assert [m["name"] for m in listed] == ["ich-tiny"]
    assert listed[0]["task"] == "ich" and listed[0]["training_data"]["n_studies"] == 12
    assert models.resolve_model("ich-tiny") == dest
    assert models.load_package("ich-tiny").metadata["sha256"] == listed[0]["sha256"]
    report = models.verify_model("ich-tiny")
    assert report["n_tensors"] == len(_trained_tiny().state_dict())
    assert report["network"].startswith("test.tiny built and loaded (strict)")

    with pytest.raises(ModelError, match="already in .*use --overwrite"):
        models.import_model(package)
    models.import_model(package, overwrite=True)
    models.import_model(package, name="second")
    assert [m["name"] for m in models.list_models()] == ["ich-tiny", "second"]

    models.remove_model("second")
    assert [m["name"] for m in models.list_models()] == ["ich-tiny"]
    with pytest.raises(ModelError, match=r"no model 'second' in the model cache .*available: ich-tiny"):
        models.remove_model("second")
    with pytest.raises(ModelError, match="invalid model name"):
        models.remove_model("../ich-tiny")
    assert package.is_dir() and _leftovers(models.cache_dir()) == []


def test_import_refuses_tampered_package_and_installs_nothing(package):
    weights = package / models.WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes() + b"\0")
    with pytest.raises(ModelError, match="cannot import .*tampered or corrupt"):
        models.import_model(package)
    assert models.list_models() == [] and _leftovers(models.cache_dir()) == []


def test_list_shows_broken_entries(package):
    dest = models.import_model(package)
    (dest / models.METADATA_FILE).write_text("[]")
    (entry,) = models.list_models()
    assert entry["name"] == "ich-tiny" and "metadata must be a JSON object" in entry["error"]


def _zip(path: Path, root: Path, prefix: str) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for file in sorted(root.rglob("*")):
            if file.is_file():
                zf.write(file, prefix + file.relative_to(root).as_posix())
    return path


def test_import_from_zip_nested_or_flat(tmp_path, package):
    nested = _zip(tmp_path / "download.zip", package, "ich-tiny/")
    assert models.import_model(nested).name == "ich-tiny"
    flat = _zip(tmp_path / "flat-model.zip", package, "")
    assert models.import_model(flat).name == "flat-model"
    assert models.verify_model("flat-model")["sha256"] == models.verify_model("ich-tiny")["sha256"]
    with pytest.raises(ModelError, match="is a file, not a model package folder; import it first"):
        models.resolve_model(flat)


def test_zip_slip_and_symlinks_are_refused(tmp_path, package):
    evil = _zip(tmp_path / "evil.zip", package, "pkg/")
    with zipfile.ZipFile(evil, "a") as zf:
        zf.writestr("pkg/../../escaped.txt", "gotcha")
    with pytest.raises(ModelError, match="unsafe path 'pkg/../../escaped.txt'"):
        models.import_model(evil)
    absolute = _zip(tmp_path / "abs.zip", package, "")
    with zipfile.ZipFile(absolute, "a") as zf:
        zf.writestr("/tmp/escaped.txt", "gotcha")
    with pytest.raises(ModelError, match="unsafe path"):
        models.import_model(absolute)
    link = _zip(tmp_path / "link.zip", package, "")
    with zipfile.ZipFile(link, "a") as zf:
        info = zipfile.ZipInfo("models/link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(ModelError, match="symbolic link"):
        models.import_model(link)
    assert not list(tmp_path.rglob("escaped.txt")) and models.list_models() == []
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("readme.txt", "no package")
    with pytest.raises(ModelError, match="no configs/metadata.json at the top"):
        models.import_model(empty)


def test_resolve_model_errors_list_what_is_available(tmp_path, package):
    models.import_model(package, name="ich-a")
    with pytest.raises(ModelError, match=r"no model 'missing'.*model cache .*available: ich-a"):
        models.resolve_model("missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(ModelError, match="is a folder but not a model package"):
        models.resolve_model(tmp_path / "plain")
    assert models.resolve_model(str(package)) == package
    with pytest.raises(ModelError, match="cannot import .*not a package folder or a .zip"):
        models.import_model(package / models.METADATA_FILE)


# ------------------------------------------------------------------------------------------------------ CLI
def test_cli_models_commands(tmp_path, package, capsys):
    assert cli.main(["models", "list"]) == 0
    assert "no models yet" in capsys.readouterr().out
    assert cli.main(["models", "import", str(package), "--name", "ich-cli"]) == 0
    assert "imported ich-cli" in capsys.readouterr().out
    assert cli.main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "ich-cli" in out and "synthetic (12 studies)" in out and str(models.cache_dir()) in out
    assert cli.main(["models", "list", "--json"]) == 0
    assert [m["name"] for m in json.loads(capsys.readouterr().out)] == ["ich-cli"]
    assert cli.main(["models", "verify", "ich-cli"]) == 0
    assert "sha256" in capsys.readouterr().out
    weights = models.cache_dir() / "ich-cli" / models.WEIGHTS_FILE
    os.chmod(weights, 0o644)
    weights.write_bytes(weights.read_bytes()[:-1])
    assert cli.main(["models", "verify", "ich-cli"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("meddl models: error:") and "tampered or corrupt" in err[0]
    assert cli.main(["models", "remove", "ich-cli"]) == 0
    assert "removed ich-cli" in capsys.readouterr().out
    assert cli.main(["models", "remove", "ich-cli"]) == 1


def test_list_models_skips_the_training_folder_beside_a_package(tmp_path):
    from MedDLLib import training

    package = models.cache_dir() / "blob"
    package.mkdir(parents=True)
    training.training_dir(package).mkdir()
    (models.cache_dir() / "stray.training").mkdir()  # no package beside it: still listed (as broken)
    names = [entry["name"] for entry in models.list_models()]
    assert "blob.training" not in names and "stray.training" in names


@pytest.mark.parametrize("task", ["ich", "lung", "glioma"])
def test_verify_builds_a_task_network_in_a_fresh_process(task, tmp_path):
    """A package's network is checked even when nothing imported the task's model module yet (a new process)."""
    import subprocess
    import sys

    if task == "ich":
        from ICHDetectorLib.model import untrained_package

        package = untrained_package(tmp_path, 32)
    elif task == "lung":
        from LungSurvivalLib.model import untrained_package

        package = untrained_package(tmp_path)
    else:
        from GliomaClassifierLib.model import untrained_package

        package = untrained_package(tmp_path)
    code = "import sys; from MedDLLib.models import verify_model; print(verify_model(sys.argv[1])['network'])"
    shown = subprocess.run([sys.executable, "-c", code, str(package)], capture_output=True, text=True, check=True)
    assert "built and loaded (strict)" in shown.stdout, shown.stdout + shown.stderr
