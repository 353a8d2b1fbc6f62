"""Evaluation metrics on synthetic data with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image
from scipy.stats import norm

from MedDLLib import evaluation as ev
from MedDLLib.errors import InputError


# ------------------------------------------------------------------------------------------------------ splits
def _groups(n_patients=23, seed=1):
    rng = np.random.default_rng(seed)
    return np.repeat([f"P{i:03d}" for i in range(n_patients)], rng.integers(1, 6, n_patients))


def test_patient_splits_keep_patients_together_and_cover_all_rows():
    groups = _groups()
    folds = ev.patient_splits(groups, n_splits=5, seed=3)
    assert len(folds) == 5
    seen = np.zeros(len(groups), int)
    for train, val in folds:
        assert set(groups[train]).isdisjoint(groups[val])
        assert len(train) + len(val) == len(groups)
        seen[val] += 1
    assert (seen == 1).all()  # each row validated exactly once
    again = ev.patient_splits(groups, n_splits=5, seed=3)
    assert all((a[1] == b[1]).all() for a, b in zip(folds, again))
    other = ev.patient_splits(groups, n_splits=5, seed=4)
    assert any(set(a[1]) != set(b[1]) for a, b in zip(folds, other))


def test_patient_splits_stratified_by_label():
    groups = np.arange(40)
    y = np.r_[np.zeros(30, int), np.ones(10, int)]
    for train, val in ev.patient_splits(groups, n_splits=5, seed=0, y=y):
        assert y[val].sum() == 2  # 10 positives spread evenly over 5 folds
        assert set(groups[train]).isdisjoint(groups[val])


def test_patient_splits_too_few_patients():
    with pytest.raises(InputError, match="5 patient-level folds from 3 distinct patients"):
        ev.patient_splits(["a", "a", "b", "c"], n_splits=5)


def test_train_val_split_never_shares_a_patient():
    groups = _groups(n_patients=20)
    train, val = ev.train_val_split(groups, val_fraction=0.25, seed=0)
    assert set(groups[train]).isdisjoint(groups[val])
    assert sorted(np.r_[train, val]) == list(range(len(groups)))
    assert len(set(groups[val])) == 5  # 25 % of 20 patients
    t2, v2 = ev.train_val_split(groups, val_fraction=0.25, seed=0)
    assert (v2 == val).all()
    small_train, small_val = ev.train_val_split(["a", "a", "b"], val_fraction=0.9)
    assert len(small_train) > 0 and len(small_val) > 0
    with pytest.raises(InputError, match="at least 2 distinct patients"):
        ev.train_val_split(["a", "a"], 0.5)
    with pytest.raises(InputError, match="val_fraction"):
        ev.train_val_split(groups, 1.0)


# ----------------------------------------------------------------------------------------------- bootstrap CI
def test_bootstrap_ci_of_a_mean_has_nominal_coverage_and_width():
    rng = np.random.default_rng(0)
    n, covered, widths = 200, 0, []
    for rep in range(40):
        x = rng.normal(loc=3.0, scale=2.0, size=n)
        est, low, high = ev.bootstrap_ci(np.mean, x, n_boot=400, seed=rep)
        assert est == pytest.approx(x.mean()) and low < est < high
        covered += low <= 3.0 <= high
        widths.append(high - low)
    assert covered >= 34  # 95 % interval: about 38 of 40
    assert np.mean(widths) == pytest.approx(2 * 1.96 * 2.0 / math.sqrt(n), rel=0.15)


def test_bootstrap_ci_groups_resample_whole_patients():
    rng = np.random.default_rng(1)
    per_patient = rng.normal(size=30)
    x = np.repeat(per_patient, 10)  # 10 identical rows per patient: only 30 independent values
    groups = np.repeat(np.arange(30), 10)
    _, lo_rows, hi_rows = ev.bootstrap_ci(np.mean, x, n_boot=500)
    _, lo_pat, hi_pat = ev.bootstrap_ci(np.mean, x, n_boot=500, groups=groups)
    assert (hi_pat - lo_pat) > 2.5 * (hi_rows - lo_rows)  # sqrt(10) wider, the honest width
    assert (hi_pat - lo_pat) == pytest.approx(2 * 1.96 * per_patient.std() / math.sqrt(30), rel=0.25)


def test_bootstrap_ci_skips_undefined_resamples_and_fails_when_mostly_undefined():
    y = np.array([0] * 18 + [1] * 2)
    s = np.linspace(0, 1, 20)
    from sklearn.metrics import roc_auc_score

    est, low, high = ev.bootstrap_ci(roc_auc_score, y, s, n_boot=200)  # some resamples have no positive
    assert est == 1.0 and low == high == 1.0
    # a metric defined on the full data but undefined on most resamples (they almost always repeat a row)

    def distinct_mean(a):
        if len(np.unique(a)) < len(a):
            raise ValueError("duplicate rows")
        return float(a.mean())

    with pytest.raises(InputError, match="undefined on 2.. of 200"):
        ev.bootstrap_ci(distinct_mean, np.arange(10.0), n_boot=200)
    with pytest.raises(InputError, match="undefined on"):
        ev.bootstrap_ci(lambda a: a.mean() if len(np.unique(a)) == len(a) else np.nan, np.arange(10.0), n_boot=200)


def test_bootstrap_ci_rejects_mismatched_arrays():
    with pytest.raises(InputError, match="array 1 has 3 rows, expected 4"):
        ev.bootstrap_ci(lambda a, b: 0.0, np.zeros(4), np.zeros(3))


# -------------------------------------------------------------------------------------------------------- AUROC
def test_auroc_perfect_inverted_random_and_known_value():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 600)
    assert ev.auroc_with_ci(y, y + 0.1 * rng.random(600), n_boot=200) == pytest.approx((1.0, 1.0, 1.0))
    assert ev.auroc_with_ci(y, -y - 0.1 * rng.random(600), n_boot=200) == pytest.approx((0.0, 0.0, 0.0))
    est, low, high = ev.auroc_with_ci(y, rng.random(600), n_boot=300)
    assert low < 0.5 < high and high - low < 0.15
    # Gaussian scores shifted by d between classes: AUROC = Phi(d / sqrt 2) = 0.760 for d = 1
    truth = norm.cdf(1 / math.sqrt(2))
    est, low, high = ev.auroc_with_ci(y, y + rng.normal(size=600), n_boot=300, seed=1)
    assert low < truth < high and abs(est - truth) < 0.05


def test_auroc_one_class_or_bad_labels_is_a_clear_error():
    with pytest.raises(InputError, match="AUROC is undefined: y_true has only one class"):
        ev.auroc_with_ci(np.ones(10), np.linspace(0, 1, 10))
    with pytest.raises(InputError, match="y_true must be binary"):
        ev.auroc_with_ci(np.arange(10), np.linspace(0, 1, 10))
    with pytest.raises(InputError, match="y_score has 9 values, expected 10"):
        ev.auroc_with_ci(np.r_[np.zeros(5), np.ones(5)], np.zeros(9))
    with pytest.raises(InputError, match="NaN"):
        ev.auroc_with_ci([0, 1, 0, 1], [0.1, np.nan, 0.2, 0.3])


# --------------------------------------------------------------------------------------------------------- Dice
def _cube_masks():
    truth = np.zeros((6, 8, 8), bool)
    truth[2:4, 2:5, 2:4] = True  # 2 slices x 6 voxels = 12
    pred = np.zeros_like(truth)
    pred[2:4, 2:4, 2:4] = True  # 2 slices x 4 voxels = 8, all inside truth
    pred[4, 0, 0:2] = True  # plus 2 false positives on slice 4
    return pred, truth


def test_dice_and_iou_per_volume_match_hand_computation():
    pred, truth = _cube_masks()
    assert ev.dice_per_volume(pred, truth) == pytest.approx(2 * 8 / (10 + 12))
    assert ev.iou_per_volume(pred, truth) == pytest.approx(8 / 14)
    assert ev.dice_per_volume(truth, truth) == 1.0
    assert ev.dice_per_volume(pred.astype(np.uint8), truth.astype(float)) == pytest.approx(16 / 22)


def test_dice_empty_conventions():
    empty = np.zeros((3, 4, 4), bool)
    some = empty.copy()
    some[1, 1, 1] = True
    assert ev.dice_per_volume(empty, empty) == 1.0
    assert math.isnan(ev.dice_per_volume(empty, empty, both_empty_is_one=False))
    assert ev.iou_per_volume(empty, empty) == 1.0
    assert ev.dice_per_volume(some, empty) == 0.0  # false positive on a tumour-free patient
    assert ev.dice_per_volume(empty, some) == 0.0


def test_dice_per_slice_is_the_labelled_inflated_variant():
    pred, truth = _cube_masks()
    with_empty = ev.dice_per_slice(pred, truth, include_empty=True)
    without = ev.dice_per_slice(pred, truth, include_empty=False)
    assert with_empty.shape == (6,)
    np.testing.assert_allclose(with_empty, [1, 1, 0.8, 0.8, 0, 1])  # slices 0, 1, 5 empty in both
    np.testing.assert_allclose(without, [0.8, 0.8, 0.0])
    assert with_empty.mean() > ev.dice_per_volume(pred, truth) > without.mean()
    np.testing.assert_allclose(ev.dice_per_slice(pred.transpose(1, 0, 2), truth.transpose(1, 0, 2), True, axis=1),
                               with_empty)


def test_dice_rejects_bad_masks():
    pred, truth = _cube_masks()
    with pytest.raises(InputError, match="differ in shape"):
        ev.dice_per_volume(pred, truth[:-1])
    with pytest.raises(InputError, match="prediction mask must be binary"):
        ev.dice_per_volume(pred * 0.7, truth)
    with pytest.raises(InputError, match="3D masks"):
        ev.dice_per_slice(pred[None], truth[None], include_empty=True)


# ---------------------------------------------------------------------------------------- weighted log loss
def test_weighted_log_loss_equals_hand_computation():
    y = np.array([[1, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0], [1, 1, 0, 0, 1, 0]])
    p = np.array([[0.9, 0.1, 0.8, 0.2, 0.1, 0.05], [0.2, 0.1, 0.1, 0.1, 0.3, 0.1], [0.6, 0.4, 0.3, 0.2, 0.7, 0.1]])
    w = [2, 1, 1, 1, 1, 1]
    total = 0.0
    for i in range(3):
        for j in range(6):
            total += w[j] * -(y[i, j] * math.log(p[i, j]) + (1 - y[i, j]) * math.log(1 - p[i, j]))
    hand = total / (3 * sum(w))
    assert ev.weighted_log_loss(y, p) == pytest.approx(hand, rel=1e-12)
    from sklearn.metrics import log_loss

    per_column = [log_loss(y[:, j], p[:, j], labels=[0, 1]) for j in range(6)]
    assert ev.weighted_log_loss(y, p) == pytest.approx(np.dot(w, per_column) / 7)
    # the weight follows the first column ("any"): moving it elsewhere changes the score
    assert ev.weighted_log_loss(y[:, ::-1], p[:, ::-1]) != pytest.approx(hand)
    assert ev.weighted_log_loss(y[:, ::-1], p[:, ::-1], weights=w[::-1]) == pytest.approx(hand)
    assert ev.RSNA2019_LABELS[0] == "any" and ev.RSNA2019_WEIGHTS[0] == 2.0


def test_weighted_log_loss_limits_and_errors():
    y = np.random.default_rng(0).integers(0, 2, (50, 6))
    assert ev.weighted_log_loss(y, np.full(y.shape, 0.5)) == pytest.approx(math.log(2))
    assert ev.weighted_log_loss(y, y.astype(float)) < 1e-10  # perfect (clipped) predictions
    assert ev.weighted_log_loss(y, 1.0 - y) > 30  # confidently wrong
    with pytest.raises(InputError, match="same shape"):
        ev.weighted_log_loss(y, np.full((50, 5), 0.5))
    with pytest.raises(InputError, match="probabilities in"):
        ev.weighted_log_loss(y, np.full(y.shape, 3.0))
    with pytest.raises(InputError, match="weights must be 6"):
        ev.weighted_log_loss(y, np.full(y.shape, 0.5), weights=[1, 1])


# ---------------------------------------------------------------------------------------------------- survival
def _planted_survival(n=150, seed=0):
    rng = np.random.default_rng(seed)
    risk = rng.normal(size=n)
    time = rng.exponential(scale=np.exp(-1.5 * risk))  # higher risk, shorter survival
    censor = rng.exponential(scale=3.0, size=n)
    return np.minimum(time, censor), risk, (time <= censor).astype(int)


def _harrell(time, risk, event):
    concordant = comparable = 0.0
    for i in range(len(time)):
        for j in range(len(time)):
            if event[i] and time[i] < time[j]:  # i died first: comparable pair
                comparable += 1
                concordant += 1.0 if risk[i] > risk[j] else 0.5 if risk[i] == risk[j] else 0.0
    return concordant / comparable


def test_concordance_index_direction_and_value():
    time, risk, event = _planted_survival()
    c = ev.concordance_index(time, risk, event)
    assert c > 0.7
    assert ev.concordance_index(time, -risk, event) < 0.3
    assert c == pytest.approx(_harrell(time, risk, event))
    noise = np.random.default_rng(5).normal(size=len(time))
    assert abs(ev.concordance_index(time, noise, event) - 0.5) < 0.1


def test_concordance_index_ci_and_errors():
    time, risk, event = _planted_survival()
    c, low, high = ev.concordance_index_with_ci(time, risk, event, n_boot=150)
    assert c == ev.concordance_index(time, risk, event)
    assert 0.5 < low < c < high < 1.0
    with pytest.raises(InputError, match="no comparable pairs"):
        ev.concordance_index(time, risk, np.zeros(len(time)))
    with pytest.raises(InputError, match="time must be non-negative"):
        ev.concordance_index(-time, risk, event)


def test_kaplan_meier_hand_example():
    km = ev.kaplan_meier_groups([1, 2, 3, 4], [1, 1, 0, 1], ["a"] * 4)
    curve = km["groups"]["a"]
    assert curve["n"] == 4 and curve["events"] == 3
    survival_at = dict(zip(curve["time"], curve["survival"]))
    assert survival_at[1.0] == pytest.approx(0.75)
    assert survival_at[2.0] == pytest.approx(0.5)
    assert survival_at[3.0] == pytest.approx(0.5)  # censored: no drop
    assert survival_at[4.0] == pytest.approx(0.0)
    assert curve["median_time"] == 2.0
    assert km["logrank_p"] is None  # a single group: nothing to compare


def test_kaplan_meier_groups_logrank_on_planted_signal(tmp_path):
    from lifelines.statistics import logrank_test

    time, risk, event = _planted_survival()
    groups = ev.risk_groups(risk)
    assert set(groups) == {"low", "high"} and (groups == "high").sum() == len(risk) // 2
    km = ev.kaplan_meier_groups(time, event, groups)
    assert km["logrank_p"] < 1e-4
    assert km["groups"]["high"]["median_time"] < km["groups"]["low"]["median_time"]
    hi = groups == "high"
    two_sample = logrank_test(time[hi], time[~hi], event[hi], event[~hi])
    assert km["logrank_p"] == pytest.approx(two_sample.p_value)
    rng = np.random.default_rng(9)
    null = ev.kaplan_meier_groups(time, event, rng.permutation(groups))
    assert null["logrank_p"] > 0.01
    png = ev.plot_kaplan_meier(time, event, groups, tmp_path / "km" / "curves.png", time_label="time (years)")
    assert png.stat().st_size > 5000
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 300
    assert not list(png.parent.glob(".*tmp"))  # no temporary file left


# ------------------------------------------------------------------------------------------------- calibration
def test_reliability_diagram_calibrated_versus_overconfident(tmp_path):
    rng = np.random.default_rng(0)
    p = rng.random(20000)
    y = (rng.random(20000) < p).astype(int)  # calibrated by construction
    good = ev.reliability_diagram(y, p, tmp_path / "good.png", n_bins=10)
    assert good["ece"] < 0.02
    assert sum(b["count"] for b in good["bins"]) == 20000 and len(good["bins"]) == 10
    from sklearn.metrics import brier_score_loss

    assert good["brier"] == pytest.approx(brier_score_loss(y, p))
    # overconfident: the truth is a coin flip whatever the prediction
    coin = rng.integers(0, 2, 20000)
    bad = ev.reliability_diagram(coin, p, tmp_path / "bad.png", n_bins=10)
    assert bad["ece"] == pytest.approx(0.25, abs=0.02)  # E|p - 0.5| for p ~ U(0, 1)
    manual = sum(b["count"] / 20000 * abs(b["observed"] - b["predicted"]) for b in bad["bins"])
    assert bad["ece"] == pytest.approx(manual)
    for name in ("good.png", "bad.png"):
        assert (tmp_path / name).stat().st_size > 5000
    q = ev.reliability_diagram(coin, p, tmp_path / "q.png", n_bins=5, strategy="quantile")
    assert [b["count"] for b in q["bins"]] == [4000] * 5


def test_reliability_diagram_errors(tmp_path):
    with pytest.raises(InputError, match="probabilities in"):
        ev.reliability_diagram([0, 1], [0.2, 1.5], tmp_path / "x.png")
    with pytest.raises(InputError, match="strategy"):
        ev.reliability_diagram([0, 1], [0.2, 0.5], tmp_path / "x.png", strategy="equal")
    assert not (tmp_path / "x.png").exists()
