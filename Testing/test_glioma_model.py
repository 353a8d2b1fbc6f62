"""The improved MGMT recipe learns the planted signal on held-out phantoms, invents none when the labels are
shuffled, and repeated CV reports mean, sd and CI; most of its Grad-CAM mass lies on the tumour region.

Set-up sized for CI on 2 cores: T1wCE only, 400 training / 32 held-out phantoms of 48 x 48 x 24, the improved
network at a quarter of its width (widen_factor 0.25), lr 1e-3 halved at epoch 16, batch 8, 20 epochs, fixed
seeds. Measured (deterministic): see the prints (``pytest -s``) and the README's glioma section.

Heatmap. Sessions 4-5 measured the whole-volume MONAI resnet10 (average pooling): its Grad-CAM put 2-5 % of the
mass on the lesion (tumour + oedema, 1.3-1.5 % of the input), 30-60 % in the air around the head and 15-27 % on
scalp and skull, at every layer, input size (48/96 px), amount of training, with Grad-CAM++, HiResCAM (11-22 %),
oracle lesion crops, skull stripping, FLAIR, three planted signals and occlusion (11-16x enrichment at best). The
cause: average pooling lets the model judge the lesion against its surroundings, and Grad-CAM's position-averaged
channel weights light every place where those channels respond (``scripts/glioma_heatmap_diagnosis.py``).

The improved recipe uses :class:`GliomaClassifierLib.model.EvidenceResNet10`: the same body, one logit per cell
of ``layer4`` (output stride 4 at this 48 px input, 16 at 256 px) and a smooth maximum (log-sum-exp, sharpness
10) instead of the average; a study called unmethylated shows no evidence at all (log-sum-exp >= max, so z < 0
means every cell < 0). Measured through the real path (8 fresh methylated phantoms, mean over those called
methylated): 0.57 of the Grad-CAM mass on the lesion for this set-up (per study 0.41-0.68); training seeds 1 and
2: 0.72 and 0.53 (per study 0.33-0.87); the rest in the brain beside the lesion (this set-up: 92-100 % of the
mass in the brain, 0.65-0.91 within 2 voxels of the lesion, under 1 % outside the head).
What moved it from session 7's 0.41 to 0.57 with the same data and seed: halving the learning rate at 80 % of the
run instead of at epoch 10, just as this network starts learning (the drop at 10 left it under-trained and its
evidence diffuse). Tried and not kept: with the earlier schedule, sharpness 5 (0.25) or 20 (0.16) and an evidence
head on layer1 alone (0.43-0.51); output stride 2 by dropping the max pool (825 s to train in memory, AUROC 0.69,
no evidence map). The limit: cells of 4 px (18 mm) against a lesion of 6-8 px radius; a map that is exactly the
lesion at this resolution holds 0.54-0.58 of its mass on it (exactly the tumour: 0.71-0.78).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from GliomaClassifierLib import dataset, logic, model, phantom
from MedDLLib.gradcam import mass_inside

TINY = dict(size=48, depth=24, widen_factor=0.25, lr=1e-3, batch_size=8, epochs=20, seed=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("glioma_model")
    kw = dict(size=48, n_slices=24, sequences=("T1wCE",))
    phantom.write_dataset(root / "train", 400, seed=0, **kw)
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


@pytest.fixture(scope="module")
def explained(improved) -> tuple[list[float], list[float]]:
    """Probability and heatmap mass inside the lesion (tumour + oedema) of 8 fresh methylated phantoms, through
    the module logic (the heatmap mapped back into the input grid)."""
    probabilities, fractions = [], []
    for seed in range(8):
        volumes, masks, _ = phantom.brain_mri(np.random.default_rng(500 + seed), 48, 24, label=1)
        result = logic.compute({"T1wCE": volumes["T1wCE"]}, improved)
        assert result.heatmap.geometry.allclose(volumes["T1wCE"].geometry)  # mapped back into the input grid
        probabilities.append(result.probability)
        fractions.append(mass_inside(result.heatmap.array, masks["lesion"]))
        if result.probability < 0.5:  # z < 0 => every cell of the evidence map < 0 (log-sum-exp >= max)
            assert result.heatmap.array.max() == 0.0, "a study called unmethylated must show no evidence"
        else:
            assert result.heatmap.array.max() == pytest.approx(1.0, abs=1e-3)
    print("p", np.round(probabilities, 2), "heatmap mass in lesion", np.round(fractions, 3))
    return probabilities, fractions


@pytest.mark.slow
def test_gradcam_mass_is_mostly_on_the_lesion(explained):
    """The lesion is 1.3 % of the input; over the methylated phantoms the model calls methylated, most of the
    Grad-CAM mass lies on it (the whole-volume resnet10 with average pooling put 2-5 % there)."""
    probabilities, fractions = explained
    called = [f for p, f in zip(probabilities, fractions) if p >= 0.5]
    assert len(called) >= 6, probabilities
    assert np.mean(called) > 0.5 and np.median(called) > 0.5 and min(called) > 0.25, called


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
