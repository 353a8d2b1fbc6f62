"""Buda et al.'s published kaggle_3m U-Net: a state dict of exactly the published keys and shapes imports as an LGG
package and runs; a wrong one is refused naming the first mismatching key."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from MedDLLib import models
from MedDLLib.cli import main

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "published-checkpoints"
if not REFERENCE.is_dir():
    REFERENCE = Path(__file__).resolve().parents[1] / "shared" / "reference" / "published-checkpoints"
needs_reference = pytest.mark.skipif(not (REFERENCE / "buda_unet_state_dict.json").is_file(),
                                     reason="shared/reference/published-checkpoints not present")


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MEDDL_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _published() -> dict:
    return json.loads((REFERENCE / "buda_unet_state_dict.json").read_text())


def _state_of_published_shapes(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors of exactly the published keys and shapes, in the published order."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in _published()["state_dict"].items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(100, dtype=torch.long)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        else:
            state[key] = torch.randn(shape, generator=gen) * 0.05
    return state


@needs_reference
def test_buda_unet_has_the_published_keys_and_shapes():
    from LGGSegmenterLib.model import BudaUNet

    network = BudaUNet(3, 1, 32)
    published = _published()
    assert [(k, list(v.shape)) for k, v in network.state_dict().items()] == list(published["state_dict"].items())
    assert sum(p.numel() for p in network.parameters()) == published["n_parameters"]


@needs_reference
def test_published_state_dict_imports_and_runs(tmp_path, home, capsys):
    weights = tmp_path / "unet-e012d006.pt"
    torch.save(_state_of_published_shapes(), weights)
    assert main(["models", "import", "--format", "buda-unet", str(weights)]) == 0
    assert "imported lgg-buda-unet" in capsys.readouterr().out
    found = models.verify_model("lgg-buda-unet")
    assert found["task"] == "lgg" and found["n_tensors"] == 118 and found["monai_bundle"] == "yes"
    package = models.load_package("lgg-buda-unet")
    assert package.metadata["recipe"] == "buda-unet" and package.metadata["input"]["size"] == 256
    from LGGSegmenterLib import model

    # a small study (K, C, H, W) through the LGG path: crop, normalisation, 256 px, network, back to the input grid
    rng = np.random.default_rng(0)
    image = np.zeros((3, 3, 96, 96), np.float32)
    image[:, :, 16:80, 20:76] = rng.uniform(20, 200, (3, 3, 64, 56))
    network = package.network()
    seg = model.segment_study(image, network, package.metadata)
    assert seg.probability.shape == (3, 96, 96) and seg.mask.shape == (3, 96, 96)
    assert seg.prepared.x.shape == (3, 3, 256, 256)
    x = seg.prepared.x
    assert abs(float(x[:, 0].mean())) < 0.1 and 0.6 < float(x[:, 0].std()) < 1.2  # z-scored, then resized


@needs_reference
@pytest.mark.parametrize("change, first", [
    (lambda s: s.pop("decoder2.dec2norm1.weight"), "decoder2.dec2norm1.weight"),
    (lambda s: s.update({"encoder3.enc3conv1.weight": torch.zeros(128, 64, 5, 5)}), "encoder3.enc3conv1.weight"),
    (lambda s: s.update({"final.weight": torch.zeros(1)}), "final.weight"),
])
def test_wrong_state_dict_is_refused_naming_the_first_mismatching_key(change, first, tmp_path, home, capsys):
    state = _state_of_published_shapes()
    change(state)
    weights = tmp_path / "unet.pt"
    torch.save(state, weights)
    assert main(["models", "import", "--format", "buda-unet", str(weights)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"first mismatching key {first!r}" in err, err
    assert not (home / "models" / "lgg-buda-unet").exists()


def test_import_help_lists_the_formats(capsys):
    with pytest.raises(SystemExit):
        main(["models", "import", "--help"])
    out = capsys.readouterr().out
    assert "buda-unet" in out and "monai-bundle" in out and "unet-e012d006.pt" in out
