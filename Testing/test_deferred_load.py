"""A model package whose weights an earlier run exported (issue 20): ``meddl infer`` checks the weights' SHA-256
and defers reading them, and building the network, to the first use (a prediction on the recorded runtime export
needs neither, nor torch). Without such a record, or with one made for other weights or another network, the
package is read and fitted at load as before, so its errors come first. Here with ``MEDDL_RUNTIME=torch`` (the
suite's process runs no runtime): ``Testing/runtime_checks.py`` runs ``meddl infer`` twice on the runtimes and
shows that the second run imports no torch.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from MedDLLib import runtime
from MedDLLib.errors import ModelError
from MedDLLib.models import load_package
from MedDLLib.pipeline import LoadedModel, load_model
from MedDLLib.taskregistry import get_task


@pytest.fixture(autouse=True)
def _torch_runtime(monkeypatch):
    monkeypatch.setenv(runtime.ENV, "torch")


@pytest.fixture
def package_folder(tmp_path):
    from GliomaClassifierLib.model import untrained_package

    return untrained_package(tmp_path / "glioma-small", size=32, depth=16, sequences=("T1wCE",))


def _record(folder, **changes) -> None:
    """A runtime record as an earlier run leaves it (an export choice for these weights and this network)."""
    metadata = load_package(folder, weights=False).metadata
    record = {"format": "meddl-runtime/1", "weights_sha256": metadata["sha256"], "network": metadata["network"],
              "choices": {"evidence_map:1x16x32x32": {"backend": "torch", "seconds": {"torch": 0.01}}}}
    record.update(changes)
    (folder / "runtime").mkdir(exist_ok=True)
    (folder / "runtime" / runtime.RECORD).write_text(json.dumps(record))


def _load(folder):
    from MedDLLib import pipeline

    pipeline._cache.clear()
    return load_model(get_task("glioma"), str(folder), "cpu")


def test_without_a_record_the_weights_are_read_and_fitted_at_load(package_folder):
    loaded = _load(package_folder)
    assert loaded.built and loaded.package.weights_read


def test_with_a_record_the_weights_wait_for_their_first_use(package_folder):
    _record(package_folder)
    loaded = _load(package_folder)
    assert not loaded.built and not loaded.package.weights_read
    found = get_task("glioma").check_model(str(package_folder))
    assert found["sha256"] == loaded.metadata["sha256"] and "runtime export" in found["network"]
    eager = load_package(package_folder).network("cpu").state_dict()
    built = loaded.network.state_dict()  # built now, strictly, from the verified weights
    assert loaded.built and built.keys() == eager.keys()
    assert all(np.array_equal(built[k].numpy(), eager[k].numpy()) for k in eager)


@pytest.mark.parametrize("changes", [{"weights_sha256": "0" * 64},
                                     {"network": {"name": "glioma.evidence_resnet10", "args": {"output_stride": 8}}},
                                     {"choices": {}}])
def test_a_record_for_other_weights_or_another_network_is_not_trusted(package_folder, changes):
    _record(package_folder, **changes)
    assert _load(package_folder).built


def test_tampered_weights_are_refused_at_load_even_with_a_record(package_folder):
    _record(package_folder)
    weights = package_folder / "models" / "model.pt"
    data = weights.read_bytes()
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    with pytest.raises(ModelError, match="do not match the sha256"):
        _load(package_folder)


def test_weights_replaced_after_the_load_are_refused_when_read(package_folder, tmp_path):
    _record(package_folder)
    loaded = _load(package_folder)
    from GliomaClassifierLib.model import untrained_package

    untrained_package(tmp_path / "seed1", size=32, depth=16, sequences=("T1wCE",), seed=1)
    shutil.copy(tmp_path / "seed1" / "models" / "model.pt", package_folder / "models" / "model.pt")
    with pytest.raises(ModelError, match="do not match the sha256"):
        loaded.network  # noqa: B018


def test_a_deferred_model_computes_what_a_loaded_one_does(package_folder):
    from GliomaClassifierLib.logic import GliomaOptions, compute
    from GliomaClassifierLib.phantom import brain_mri

    volumes = {"T1wCE": brain_mri(np.random.default_rng(0), size=48, n_slices=20, label=1)[0]["T1wCE"]}
    eager = compute(volumes, LoadedModel(load_package(package_folder), None, "cpu"), GliomaOptions())
    _record(package_folder)
    deferred = _load(package_folder)
    result = compute(volumes, deferred, GliomaOptions())
    assert result.probability == eager.probability
    assert np.array_equal(result.heatmap.array, eager.heatmap.array)
