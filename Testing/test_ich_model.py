"""The ICH recipes on held-out phantom studies: the improved recipe learns the planted bleeds, the seed does not.

Same phantoms, same number of epochs for both recipes (epoch-bounded and seeded, so the run is reproducible).
The full-size figures (36 training studies at 64 px, 30 epochs: 'any' AUROC >= 0.95) are in the README.
"""

from __future__ import annotations

import pytest

from ICHDetectorLib import dataset, model, phantom


@pytest.mark.slow
def test_improved_beats_seed_on_held_out_studies(tmp_path):
    phantom.write_dataset(tmp_path / "train", 32, seed=0, size=48, n_slices=10)
    phantom.write_dataset(tmp_path / "test", 16, seed=1000, size=48, n_slices=10)
    train = dataset.scan_dataset(tmp_path / "train").studies
    test = dataset.scan_dataset(tmp_path / "test").studies
    assert {s.patient_id for s in train}.isdisjoint(s.patient_id for s in test)
    metrics = {}
    for name in ("seed", "improved"):
        model.train_model(train, tmp_path / name, name, epochs=8, size=48, seed=0)
        metrics[name] = model.evaluate_model(tmp_path / name, test, n_boot=200)
    seed, improved = metrics["seed"], metrics["improved"]
    assert improved["weighted_log_loss"] < seed["weighted_log_loss"], (seed, improved)
    assert improved["auroc_any"] > seed["auroc_any"] + 0.15, (seed, improved)
    assert improved["auroc_any"] >= 0.75, improved  # measured 0.83 here; untrained: about 0.5
    assert improved["auroc_any_ci_low"] > 0.5  # the CI (resampling whole studies) excludes chance
    for key in ("auroc_any", "weighted_log_loss", "auroc_subdural"):
        assert metrics["improved"][f"{key}_ci_low"] <= metrics["improved"][key] <= metrics["improved"][f"{key}_ci_high"]
