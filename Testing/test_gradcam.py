"""Grad-CAM on a model with a known answer: a 3D CNN trained on phantoms with a planted lesion must light it up.

The phantoms are 1 mm volumes (48^3) with smooth noise; positives carry a bright ellipsoid "lesion" at a random
place. Preprocessing resamples them to 2 mm (24^3), so the heatmap comes out on the network grid and must be
mapped back through that resampling into the input geometry, where most of its mass has to fall inside the
lesion.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from MedDLLib import gradcam, models, nodes, phantoms, training
from MedDLLib.datasets import FileDataset
from MedDLLib.geometry import Geometry, Volume
from MedDLLib.resample import resample

SHAPE = (48, 48, 48)
GEOMETRY = Geometry((1.0, 1.0, 1.0), (-24.0, -30.0, 10.0))


class TinyCNN3D(nn.Module):
    """conv -> conv -> conv "features" -> global max -> one logit. Input (B, 1, D, H, W)."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv3d(1, channels, 3, padding=1), nn.ReLU(),
            nn.Conv3d(channels, 2 * channels, 3, padding=1), nn.ReLU(),
        )
        self.features = nn.Conv3d(2 * channels, 2 * channels, 3, padding=1)
        self.head = nn.Linear(2 * channels, 1)

    def forward(self, x):
        x = torch.relu(self.features(self.body(x)))
        return self.head(x.amax(dim=(2, 3, 4)))


models.register_network("test.TinyCNN3D", TinyCNN3D)


def make_case(rng: np.random.Generator, positive: bool) -> tuple[Volume, np.ndarray]:
    """A 1 mm phantom volume and its lesion mask (empty for negatives)."""
    image = 100.0 + 15.0 * phantoms.smooth_noise(SHAPE, 1.0, rng)
    mask = np.zeros(SHAPE, bool)
    if positive:
        centre = rng.uniform(12, 36, size=3)
        mask = phantoms.ellipsoid_mask(SHAPE, tuple(centre), tuple(rng.uniform(4, 6, size=3)))
        image[mask] += 60.0
    return Volume(image.astype(np.float32), GEOMETRY), mask


def preprocess(volume: Volume) -> Volume:
    """To the network grid: 2 mm voxels, intensities scaled near [0, 1]."""
    small = resample(volume, spacing_mm=(2.0, 2.0, 2.0))
    return small.with_array(((small.array - 100.0) / 60.0).astype(np.float32))


def load_sample(path):
    data = np.load(path)
    return torch.from_numpy(data["x"][None]), torch.tensor([float(data["y"])])


@pytest.mark.slow
def test_trained_phantom_model_lights_up_the_planted_lesion(tmp_path, headless_scene):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(48):
        volume, _ = make_case(rng, positive=bool(i % 2))
        paths.append(tmp_path / f"case{i:02d}.npz")
        np.savez(paths[-1], x=preprocess(volume).array, y=i % 2)
    net = TinyCNN3D()
    metadata = {"task": "test", "version": "1", "recipe": "test", "network": {"name": "test.TinyCNN3D", "args": {}},
                "input": {"channels": ["intensity"], "spacing_mm": [2, 2, 2]}, "output": {"labels": ["lesion"]},
                "training_data": {"kind": "synthetic", "n_studies": 40, "description": "blob phantoms"},
                "metrics": {}}
    result = training.train(net, FileDataset(paths[:40], load_sample), FileDataset(paths[40:], load_sample),
                            nn.BCEWithLogitsLoss(), training.TrainConfig(out=tmp_path / "model", epochs=12,
                                                                         batch_size=8, lr=3e-3, seed=0),
                            metadata=metadata)
    network = models.load_package(result.package).network()

    masses = []
    test_rng = np.random.default_rng(123)
    for _ in range(4):
        volume, mask = make_case(test_rng, positive=True)
        grid = preprocess(volume)
        heat = gradcam.compute_gradcam(network, torch.from_numpy(grid.array[None, None]), "features")
        assert heat.shape == (1, 24, 24, 24) and 0.0 <= heat.min() and heat.max() == pytest.approx(1.0)
        back = gradcam.heatmap_to_reference(heat[0], grid.geometry, volume)
        assert back.array.shape == SHAPE and back.geometry.allclose(volume.geometry)
        masses.append(gradcam.mass_inside(back.array, mask))
        assert mask[np.unravel_index(back.array.argmax(), SHAPE)]  # the hottest voxel is in the lesion
    # The lesion fills < 1 % of the volume; a trained model puts most of the heatmap mass on it.
    assert np.mean(masses) > 0.5, masses

    node = gradcam.add_heatmap_node(headless_scene, back)
    np.testing.assert_allclose(nodes.volume_from_node(node).array, back.array)
    assert nodes.volume_from_node(node).geometry.allclose(volume.geometry)


def test_gradcam_rejects_unknown_layer_and_is_zero_without_evidence():
    net = TinyCNN3D()
    with pytest.raises(ValueError, match="target layer 'nope'"):
        gradcam.compute_gradcam(net, torch.zeros(1, 1, 8, 8, 8), "nope")
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
    heat = gradcam.compute_gradcam(net, torch.rand(2, 1, 8, 8, 8), "features")
    assert heat.shape == (2, 8, 8, 8) and not heat.any()
    assert net.training  # mode restored
