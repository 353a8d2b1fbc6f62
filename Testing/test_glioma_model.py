"""The improved MGMT recipe learns the planted signal on held-out phantoms, invents none when the labels are
shuffled, and repeated CV reports mean, sd and CI. Grad-CAM localisation on the lesion is a known gap (strict
xfail: it fails the suite the day it starts to pass, so the marker gets removed).

Tiny set-up so the tests fit CI on 2 cores: T1wCE only, 96 training / 32 held-out phantoms of 48 x 48 x 24,
resnet10 at a quarter of its width (widen_factor 0.25), lr 1e-3, batch 8, 12 epochs, fixed seeds. Measured
(deterministic): improved AUROC 0.975 (95 % CI 0.90-1.00) held out; labels shuffled 0.62 (0.44-0.82). The seed
recipe on the same data and budget: 0.56 (0.34-0.76) -- too slow (stride 1) for CI, measured by hand.

Why Grad-CAM is not on the lesion (measured by hand, 6 fresh methylated phantoms each): the trained resnet10
uses context, not only the lesion. In its input space, keeping only the brain turns every case methylated
(p 0.72-0.99, unmethylated cases included), keeping only the lesion gives p 0.96-0.99 for both labels, while
erasing the lesion drops methylated cases to p 0.01-0.27: the lesion is necessary, the surroundings (scalp
fat, the per-slice min-max reference) are its yardstick. Heatmap mass in the lesion stayed at 1-21 % for:
Grad-CAM and Grad-CAM++ on act/layer1..layer4, HiResCAM (gradient x activation), inputs of 96 px, a stride-1
network, a global max-pool head, skull-stripped phantoms, and brain-median instead of min-max normalisation;
masking the map to the brain gives at most 33 %.
Nor is it only the planted signal: phantoms whose label sets the rim's thickness (local and free of the
intensity scale; the model learned it, validation AUROC 0.98 at 96 px) left 1-8 % in the lesion too. The same
``compute_gradcam`` does localise a small stride-1 max-pool network (``test_gradcam.py``).

Session 4 (in-memory training at 96 x 96 x 32, 8 held-out methylated phantoms, lesion = 1.3 % of the volume):
- The check cannot pass at this test's 48 px by construction: a *perfect* map (the lesion mask averaged to a
  layer's resolution, upsampled as Grad-CAM is) puts 0.54-0.58 of its mass in the lesion at layer1 (1/4) and
  0.22-0.28 at layer2 (1/8); at 96 x 96 x 32: 0.71-0.73 and 0.43-0.52; at 128 x 128 x 64: 0.82 and 0.66
  (layer3: 0.40). Only layer1/layer2 maps of >= 128 px inputs, nearly perfect, could reach "most of the mass".
- The trained maps are far from that, and more training makes them worse: 300 phantoms x 40 epochs (AUROC 0.96)
  gives 0.000 / 0.007 / 0.027 at layer1/2/3 (96 phantoms x 12 epochs: 0.03-0.04); stride 1 (AUROC 0.98):
  0.04-0.05; a presence-type signal (ring enhancement in 90 % of methylated and 10 % of unmethylated tumours,
  AUROC 0.93 against a Bayes 0.90) 0.02-0.04. The exact CAM decomposition of the logit at layer4 (GAP + linear)
  has 0.015 in the lesion: no enrichment over its 1.3 % share. Gradient x activation (HiResCAM) at layer1: 0.23.
- Why: ResNet-10's receptive fields (stride-2 conv1, measured by gradients) span 27 / 51 / 99 / 195 px at
  layer1..layer4, so at a 96 px input every layer3 and layer4 unit sees the whole head and average pooling lets
  the lesion's evidence sit at any position; shallower layers' Grad-CAM weights globally averaged gradients of
  low-level features that fire on all tissue. A local-evidence model (small receptive field, max pooling:
  ``test_gradcam.py``) localises.
A real check needs a model trained at >= 128 px (GPU) or a local-evidence classifier (e.g. on tumour-centred
crops, as the lung module does); the criterion may also be better stated as an enrichment over the lesion's
share of the volume.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from GliomaClassifierLib import dataset, logic, model, phantom
from MedDLLib.gradcam import mass_inside

TINY = dict(size=48, depth=24, widen_factor=0.25, lr=1e-3, batch_size=8, epochs=12, seed=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("glioma_model")
    kw = dict(size=48, n_slices=24, sequences=("T1wCE",))
    phantom.write_dataset(root / "train", 96, seed=0, **kw)
    phantom.write_dataset(root / "test", 32, seed=1000, include_flagged=False, **kw)
    return root, dataset.scan_dataset(root / "train").cases, dataset.scan_dataset(root / "test").cases


@pytest.fixture(scope="module")
def improved(data):
    root, train, _ = data
    model.train_model(train, root / "improved", "improved", cache_dir=root / "cache", **TINY)
    return root / "improved"


@pytest.mark.slow
def test_improved_learns_the_planted_signal(data, improved):
    root, _, test = data
    metrics = model.evaluate_model(improved, test, cache_dir=root / "cache", n_boot=500)
    print("improved held-out", {k: round(metrics[k], 3) for k in ("auroc", "auroc_ci_low", "auroc_ci_high")})
    assert metrics["auroc"] >= 0.85, metrics  # measured 0.975 (CI 0.91-1.0); achievable: achievable_auroc(1) = 0.973
    assert metrics["auroc_ci_low"] > 0.5 and not metrics["ci_contains_chance"]
    assert metrics["auroc_ci_low"] <= metrics["auroc"] <= metrics["auroc_ci_high"]
    assert "Research use only" in metrics["model_card"]


@pytest.mark.slow
def test_shuffled_labels_give_chance(data):
    root, train, test = data
    labels = np.random.default_rng(7).permutation([c.label for c in train])
    shuffled = [dataclasses.replace(c, label=int(v)) for c, v in zip(train, labels)]
    model.train_model(shuffled, root / "shuffled", "improved", cache_dir=root / "cache", **TINY)
    metrics = model.evaluate_model(root / "shuffled", test, cache_dir=root / "cache", n_boot=500)
    print("shuffled labels held-out", {k: round(metrics[k], 3) for k in ("auroc", "auroc_ci_low", "auroc_ci_high")})
    assert metrics["auroc_ci_low"] <= 0.5 <= metrics["auroc_ci_high"], metrics
    assert metrics["ci_contains_chance"]


def _gradcam_lesion_fractions(package) -> tuple[list[float], list[float]]:
    """Heatmap mass inside the lesion (tumour + oedema) of fresh methylated phantoms, and the lesion's share of
    the brain (what an uninformative map inside the brain would give)."""
    fractions, shares = [], []
    for seed in range(4):
        volumes, masks, _ = phantom.brain_mri(np.random.default_rng(500 + seed), 48, 24, label=1)
        result = logic.compute({"T1wCE": volumes["T1wCE"]}, package)
        assert result.heatmap.geometry.allclose(volumes["T1wCE"].geometry)  # mapped back into the input grid
        assert result.heatmap.array.max() == pytest.approx(1.0, abs=1e-3)
        fractions.append(mass_inside(result.heatmap.array, masks["lesion"]))
        shares.append(float(masks["lesion"].sum() / masks["brain"].sum()))
    print("Grad-CAM mass in lesion", np.round(fractions, 3), "lesion share of brain", np.round(shares, 3))
    return fractions, shares


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="known gap: the Grad-CAM of a resnet10 trainable on CPU phantoms is not "
                   "concentrated on the lesion (whole-head receptive fields; at 48 px even a perfect layer2 map "
                   "puts < 30 % there); see this module's docstring")
def test_gradcam_mass_is_on_the_lesion(improved):
    fractions, _ = _gradcam_lesion_fractions(improved)
    assert np.mean(fractions) > 0.5


@pytest.mark.slow
def test_repeated_cross_validation_reports_mean_sd_and_ci(data, tmp_path):
    root, train, _ = data
    cases = train[:20]
    args = {k: v for k, v in TINY.items() if k not in ("seed", "epochs")}
    cv = model.cross_validate(cases, tmp_path / "cv", "improved", folds=2, seeds=(0, 1), n_boot=200,
                              cache_dir=root / "cache", epochs=2, **args)
    assert len(cv["auroc_per_seed"]) == 2 and cv["seeds"] == [0, 1] and cv["folds"] == 2
    assert cv["auroc_mean"] == pytest.approx(np.mean(cv["auroc_per_seed"]))
    assert cv["auroc_sd"] == pytest.approx(np.std(cv["auroc_per_seed"], ddof=1))
    assert cv["auroc_ci_low"] <= cv["auroc"] <= cv["auroc_ci_high"] and cv["n_cases"] == 20
    assert sorted(p.name for p in (tmp_path / "cv").iterdir() if p.name.startswith("seed") and "." not in p.name) == [
        "seed0-fold0", "seed0-fold1", "seed1-fold0", "seed1-fold1"]
    few = [dataclasses.replace(c, label=1) for c in cases[:-1]] + [cases[-1]]
    with pytest.raises(Exception, match="at least 2 cases of each class"):
        model.cross_validate(few, tmp_path / "cv2", "improved", folds=2, seeds=(0,))
