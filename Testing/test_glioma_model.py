"""The improved MGMT recipe learns the planted signal on held-out phantoms, invents none when the labels are
shuffled, and repeated CV reports mean, sd and CI. Grad-CAM localisation on the lesion is a known gap (strict
xfail: it fails the suite the day it starts to pass, so the marker gets removed).

Tiny set-up so the tests fit CI on 2 cores: T1wCE only, 96 training / 32 held-out phantoms of 48 x 48 x 24,
resnet10 at a quarter of its width (widen_factor 0.25), lr 1e-3, batch 8, 12 epochs, fixed seeds. Measured
(deterministic): improved AUROC 0.975 (95 % CI 0.90-1.00) held out; labels shuffled 0.62 (0.44-0.82). The seed
recipe on the same data and budget: 0.56 (0.34-0.76) -- too slow (stride 1) for CI, measured by hand.

Why Grad-CAM is not on the lesion (the check is a strict xfail). Reproduce the main table with
``scripts/glioma_heatmap_diagnosis.py`` (the real training path; 8 fresh methylated phantoms; lesion = tumour +
oedema = 1.5 % of the network input, 4.1 % of the head, 7 % of the brain). Mass of the positive-logit map:

    map (48 px / 96 px input)   in lesion      brain rest     scalp + skull  air
    Grad-CAM layer1             0.02 / 0.02    0.25 / 0.29    0.23 / 0.22    0.51 / 0.48
    Grad-CAM layer2 (shown)     0.05 / 0.02    0.38 / 0.28    0.27 / 0.18    0.30 / 0.52
    Grad-CAM layer3             0.02 / 0.03    0.25 / 0.22    0.16 / 0.15    0.57 / 0.60
    HiResCAM layer1             0.11 / 0.13    0.45 / 0.23    0.17 / 0.30    0.27 / 0.35
    gradient x input            0.16 / 0.16    0.53 / 0.38    0.31 / 0.46    0.00 / 0.00

(48 px: 96 phantoms x 12 epochs, this module's fixture, validation AUROC 0.98; 96 px: 200 x 20, 0.99.)
Restricting a map to the head leaves Grad-CAM at 0.03-0.07; restricted to the brain, the best map holds 0.36
(HiResCAM layer1, 96 px).

- The model needs the lesion but judges it against its surroundings: erasing the lesion drops methylated cases
  to p 0.01-0.27, while keeping only the brain (or only the lesion) makes every case methylated (the per-slice
  min-max scale and the scalp fat are the yardstick). Grad-CAM weights each channel by its gradient averaged over
  all positions, so channels that carry the lesion's evidence but also respond elsewhere spread the map: 30-60 %
  of it lies in the air around the head (where each channel's activation is a constant) and 15-27 % on scalp and
  skull. Element-wise maps (HiResCAM layer1, gradient x input) are 7-10x enriched on the lesion, far from "most".
- A tumour-centred input does not fix it: resnet10 trained on oracle lesion-centred crops (48 x 48 x 16 of the
  96 px input, lesion 10.6 % of the crop; AUROC 0.96 at a quarter and at full width) puts 0.00 / 0.04-0.05 /
  0.10-0.13 / 0.10-0.11 of its Grad-CAM mass in the lesion at layer1..4: no more than the lesion's share.
- Nor do a FLAIR channel (T1wCE + FLAIR, AUROC 0.97: Grad-CAM 0.02-0.05, HiResCAM layer1 0.28), crude skull
  stripping (input zeroed outside the brain, AUROC 0.975: layer1 Grad-CAM then puts 93 % in the air; HiResCAM
  layer1 0.38), more training (300 x 40 epochs at 96 px, AUROC 0.96: 0.000 / 0.007 / 0.027 at layer1/2/3), a
  stride-1 network (0.04-0.05), a global max-pool head, Grad-CAM++, brain-median normalisation, or other planted
  signals (rim thickness; ring enhancement present in 90 % of methylated and 10 % of unmethylated tumours):
  Grad-CAM stays at 0-21 %.
- Resolution bounds it as well: a *perfect* map (the lesion mask averaged to a layer's resolution, upsampled as
  Grad-CAM is) puts 0.54-0.58 / 0.22-0.28 of its mass in the lesion at layer1 / layer2 of a 48 px input, 0.71-0.73
  / 0.43-0.52 at 96 px, 0.82 / 0.66 at 128 x 128 x 64. ResNet-10's receptive fields (stride-2 conv1, measured by
  gradients) span 27 / 51 / 99 / 195 px at layer1..layer4.
- An occlusion map (the drop of the logit when a 16 x 16 x 8 cube of the 96 px input is zeroed, stride 8 x 8 x 4;
  7 s a case) puts 0.14-0.22 of its mass in the lesion (4 methylated phantoms): 11-16x enriched, not "most".
The same ``compute_gradcam`` does localise a small stride-1 max-pool network whose evidence is local
(``test_gradcam.py``). Going from 48 to 96 px did not move the trained maps towards the perfect-map bound, so a
larger model trained on a GPU is not expected to meet the criterion by itself. What would make it checkable: the
criterion restated as an enrichment over the lesion's share (Grad-CAM here: about 1-3x; HiResCAM layer1, gradient
x input and occlusion: 7-16x), or a model whose evidence is local by design (patch-level scores, multiple-instance
pooling), which departs from the issue's whole-volume ResNet-10.
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
@pytest.mark.xfail(strict=True, reason="known gap: Grad-CAM of the phantom resnet10 puts 2-5 % of its mass on the "
                   "lesion, the rest on brain, scalp, skull and air (position-averaged channel weights); see this "
                   "module's docstring")
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
