"""Glioma's one-forward prediction and Grad-CAM (:func:`GliomaClassifierLib.model.predict_with_evidence`) equal the
two torch passes they replace: ``forward``'s probability and :func:`MedDLLib.gradcam.compute_gradcam` at
``evidence`` (torch here; the runtimes' agreement is checked in ``Testing/runtime_checks.py``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from GliomaClassifierLib.evidence import predict_with_evidence
from GliomaClassifierLib.model import EvidenceResNet10
from MedDLLib.gradcam import cam_maps, compute_gradcam


@pytest.fixture(autouse=True)
def _torch_runtime(monkeypatch):
    monkeypatch.setenv("MEDDL_RUNTIME", "torch")


def _network(seed: int, output_stride: int = 4) -> EvidenceResNet10:
    torch.manual_seed(seed)
    network = EvidenceResNet10(n_input_channels=2, conv1_t_stride=1, output_stride=output_stride,
                               widen_factor=0.125).eval()
    with torch.no_grad():  # a spread of evidence: some cells positive, some negative
        network.evidence.bias.fill_(0.05)
    return network


@pytest.mark.parametrize("seed,output_stride", [(0, 4), (1, 8)])
def test_one_forward_equals_forward_and_gradcam(seed, output_stride):
    network = _network(seed, output_stride)
    x = torch.randn(3, 2, 12, 20, 24, generator=torch.Generator().manual_seed(seed))
    probabilities, maps = predict_with_evidence(network, x.numpy())
    with torch.no_grad():
        expected = torch.sigmoid(network(x)).numpy().ravel()
    gradcam = compute_gradcam(network, x, "evidence", class_index=0, bf16=False)
    assert maps.shape == gradcam.shape == (3, 12, 20, 24)
    assert np.abs(probabilities - expected).max() <= 1e-6
    assert gradcam.max() == pytest.approx(1.0) and np.abs(maps - gradcam).max() <= 1e-5


def test_without_maps_only_the_probability():
    network = _network(2)
    x = torch.randn(1, 2, 8, 16, 16, generator=torch.Generator().manual_seed(2))
    probabilities, maps = predict_with_evidence(network, x.numpy(), maps=False)
    assert maps is None and probabilities.shape == (1,)


def test_cam_maps_keep_only_positive_evidence_normalised_over_the_batch():
    cam = np.zeros((2, 1, 2, 2, 2), np.float32)
    cam[0, 0, 0, 0, 0], cam[1, 0, 1, 1, 1], cam[1, 0, 0, 1, 0] = 2.0, 4.0, -9.0
    maps = cam_maps(cam, (2, 2, 2))  # same size: no interpolation
    assert maps[1, 1, 1, 1] == 1.0 and maps[0, 0, 0, 0] == 0.5  # one maximum for the batch
    assert maps.min() == 0.0 and np.count_nonzero(maps) == 2  # the negative cell is not evidence
    assert not cam_maps(-np.ones((1, 1, 2, 2), np.float32), (4, 4)).any()
