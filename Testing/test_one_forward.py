"""Where a study needs both the prediction and Grad-CAM, the network's forward runs once (issue 20): ICH takes its
probabilities from Grad-CAM's fp32 forward when the prediction runs in torch anyway, lung its risk and glioma's seed
recipe its probability the same way, and glioma's improved recipe takes both from one forward of its evidence map. The outputs are those of the two separate passes (same probabilities, same maps)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from MedDLLib.models import load_package


@pytest.fixture(autouse=True)
def _torch_runtime(monkeypatch):
    monkeypatch.setenv("MEDDL_RUNTIME", "torch")


def _count_calls(module: torch.nn.Module, method: str = "forward") -> list[int]:
    calls = [0]
    original = getattr(module, method)

    def counted(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    setattr(module, method, counted)
    return calls


def test_ich_prediction_comes_from_the_gradcam_forward(tmp_path):
    from ICHDetectorLib.logic import ICHOptions, compute
    from ICHDetectorLib.model import load_model, predict_inputs
    from ICHDetectorLib.phantom import head_ct
    from ICHDetectorLib.preprocess import InputSpec, volume_input
    from ICHDetectorLib.model import untrained_package
    from MedDLLib.gradcam import compute_gradcam, heatmap_to_reference
    from MedDLLib.pipeline import LoadedModel

    volume, _, _ = head_ct(np.random.default_rng(0), 64, 8, ("subdural",))
    network, package = load_model(untrained_package(tmp_path, 32), "cpu")
    calls = _count_calls(network)
    result = compute(volume, LoadedModel(package, network, "cpu"), ICHOptions(heatmap_label="any", threshold=0.01))
    assert calls[0] == 1  # one forward for the probabilities and the heatmap

    inputs, grid = volume_input(volume, InputSpec.from_metadata(package.metadata["input"]))
    separate = predict_inputs(network, inputs, "sigmoid")
    assert np.abs(result.probabilities - separate).max() <= 1e-6
    maps = compute_gradcam(network, torch.from_numpy(inputs), "layer3", class_index=0, bf16=False)
    expected = heatmap_to_reference(maps * (separate[:, 0] >= 0.01)[:, None, None], grid, volume)
    assert expected.array.max() > 0 and np.abs(result.heatmap.array - expected.array).max() <= 1e-5
    calls[0] = 0
    compute(volume, LoadedModel(package, network, "cpu"), ICHOptions(heatmap_label=None))
    assert calls[0] == 1  # without a heatmap: the prediction forward alone


def test_lung_risk_comes_from_the_gradcam_forward(tmp_path):
    from LungSurvivalLib import model as lungmodel
    from LungSurvivalLib.logic import LungOptions, compute
    from LungSurvivalLib.phantom import chest_ct
    from LungSurvivalLib.preprocess import InputSpec, network_input
    from MedDLLib.gradcam import compute_gradcam, heatmap_to_reference

    volume, _, _ = chest_ct(np.random.default_rng(4), 64, 24, tumour_diameter_mm=40.0)
    package = load_package(lungmodel.untrained_package(tmp_path, seed=3))
    network = package.network("cpu")
    calls = _count_calls(network)
    result = compute(volume, network, package.metadata, LungOptions())
    assert calls[0] == 1  # one forward for the risk and the heatmap

    x, grid, _ = network_input(volume, result.segmentation.labels, InputSpec.from_metadata(package.metadata["input"]))
    separate = float(lungmodel.risk_scores(lungmodel.predict_inputs(network, x[None]), "improved")[0])
    assert result.risk_score == pytest.approx(separate, abs=1e-6)
    maps = compute_gradcam(network, torch.from_numpy(x[None]), lungmodel.GRADCAM_LAYER, class_index=0, bf16=False)
    expected = heatmap_to_reference(maps[0], grid, volume)
    assert np.abs(result.heatmap.array - expected.array).max() <= 1e-6
    calls[0] = 0
    without = compute(volume, network, package.metadata, LungOptions(gradcam=False))
    assert calls[0] == 1 and without.heatmap is None and without.risk_score == pytest.approx(separate, abs=1e-6)


def test_glioma_runs_only_the_evidence_map(tmp_path):
    from GliomaClassifierLib.logic import GliomaOptions, compute
    from GliomaClassifierLib.model import untrained_package
    from GliomaClassifierLib.phantom import brain_mri
    from MedDLLib.pipeline import LoadedModel

    package = load_package(untrained_package(tmp_path / "m", size=32, depth=16, sequences=("T1wCE",)))
    network = package.network("cpu")
    volumes = {"T1wCE": brain_mri(np.random.default_rng(0), size=48, n_slices=20, label=1)[0]["T1wCE"]}
    forward, evidence = _count_calls(network), _count_calls(network, "evidence_map")
    result = compute(volumes, LoadedModel(package, network, "cpu"), GliomaOptions())
    assert (forward[0], evidence[0]) == (0, 1) and result.heatmap is not None
    with torch.no_grad():
        from GliomaClassifierLib.preprocess import InputSpec, prepare

        x = torch.from_numpy(prepare(volumes, InputSpec.from_metadata(package.metadata["input"])).array[None])
        assert float(torch.sigmoid(network(x))) == pytest.approx(result.probability, abs=1e-6)


def test_glioma_seed_probability_comes_from_the_gradcam_forward(tmp_path):
    from GliomaClassifierLib.logic import GliomaOptions, compute
    from GliomaClassifierLib.model import predict_arrays, untrained_package
    from GliomaClassifierLib.phantom import brain_mri
    from GliomaClassifierLib.preprocess import InputSpec, prepare
    from MedDLLib.gradcam import compute_gradcam, heatmap_to_reference
    from MedDLLib.pipeline import LoadedModel

    package = load_package(untrained_package(tmp_path / "m", "seed", size=32, depth=16, sequences=("FLAIR",)))
    network = package.network("cpu")
    volumes = {"FLAIR": brain_mri(np.random.default_rng(1), size=48, n_slices=20, label=1)[0]["FLAIR"]}
    calls = _count_calls(network)
    result = compute(volumes, LoadedModel(package, network, "cpu"), GliomaOptions())
    assert calls[0] == 1 and result.heatmap is not None  # one forward for the probability and the map
    prepared = prepare(volumes, InputSpec.from_metadata(package.metadata["input"]))
    x = prepared.array[None]
    assert result.probability == pytest.approx(float(predict_arrays(network, x)[0]), abs=1e-6)
    layer = package.metadata["output"].get("gradcam_layer") or "layer2"
    maps = compute_gradcam(network, torch.from_numpy(x), layer, class_index=0, bf16=False)
    expected = heatmap_to_reference(maps[0], prepared.grid, prepared.reference)
    assert expected.array.max() > 0 and np.abs(result.heatmap.array - expected.array).max() <= 1e-6
    calls[0] = 0
    without = compute(volumes, LoadedModel(package, network, "cpu"), GliomaOptions(gradcam=False))
    assert calls[0] == 1 and without.heatmap is None and without.probability == pytest.approx(result.probability,
                                                                                              abs=1e-6)
