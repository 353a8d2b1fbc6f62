"""Honest evaluation metrics shared by the four tasks: plain numpy arrays in, plain Python numbers out.

What is here, and which library does the work:

* patient/study-level splits -- :func:`patient_splits` (sklearn ``GroupKFold`` / ``StratifiedGroupKFold``) and
  :func:`train_val_split` (``GroupShuffleSplit``): a patient is never on both sides;
* confidence intervals -- :func:`bootstrap_ci` (percentile bootstrap, optionally resampling whole patients) and
  :func:`auroc_with_ci` (sklearn ``roc_auc_score``);
* segmentation overlap -- :func:`dice_per_volume` / :func:`iou_per_volume` (MONAI ``compute_dice`` /
  ``compute_iou``, one number per 3D volume = per patient: the honest protocol) and :func:`dice_per_slice`
  (the per-slice variant that inflated published LGG scores; labelled as such);
* :func:`weighted_log_loss` -- the RSNA 2019 intracranial haemorrhage metric (sklearn ``log_loss`` per label);
* survival -- :func:`concordance_index` (lifelines; *risk* in, higher risk = shorter survival),
  :func:`concordance_index_with_ci`, :func:`risk_groups`, :func:`kaplan_meier_groups` (Kaplan-Meier + log-rank,
  lifelines), :func:`number_at_risk` and :func:`plot_kaplan_meier` (with the number-at-risk table under it);
* ROC -- :func:`roc_with_ci` (sklearn ``roc_curve``; pointwise bootstrap band) and :func:`plot_roc`;
* calibration -- :func:`reliability_diagram` (sklearn ``calibration_curve``; expected calibration error, Brier);
* :func:`classifier_figures` -- the ROC curve and the reliability diagram of a binary classifier, written beside
  its ``metrics.json`` by ``meddl evaluate``.

Inputs that make a metric meaningless (one class only, no comparable survival pairs, masks that are not binary,
length mismatches) raise :class:`~MedDLLib.errors.InputError` with the reason. PNGs are written atomically
(temporary file + rename) with matplotlib's Agg canvas; no pyplot state is touched.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from .errors import InputError, MedDLError

#: Label order of :func:`weighted_log_loss`'s default weights (RSNA 2019 winner's order: "any" first).
RSNA2019_LABELS: tuple[str, ...] = (
    "any",
    "epidural",
    "intraparenchymal",
    "intraventricular",
    "subarachnoid",
    "subdural",
)
#: RSNA 2019 label weights in :data:`RSNA2019_LABELS` order: "any" counts twice.
RSNA2019_WEIGHTS: tuple[float, ...] = (2.0, 1.0, 1.0, 1.0, 1.0, 1.0)


# ----------------------------------------------------------------------------------------------------- splits
def patient_splits(
    groups: Sequence[Any] | np.ndarray,
    n_splits: int = 5,
    seed: int = 0,
    y: Sequence[Any] | np.ndarray | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """K-fold splits at patient (or study) level: all rows of a patient fall in the same fold.

    Args:
        groups: (N,) patient/study id of each row (slice, study, sample).
        n_splits: number of folds; at most the number of distinct patients.
        seed: shuffles the patients before assigning folds (same seed, same folds).
        y: optional (N,) class labels; when given, folds also keep the class balance (``StratifiedGroupKFold``).

    Returns:
        ``n_splits`` pairs ``(train_index, val_index)`` of int arrays indexing the N rows.
    """
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    groups = _1d(groups, "groups")
    n_groups = len(np.unique(groups))
    if n_splits < 2:
        raise InputError(f"n_splits must be at least 2, got {n_splits}")
    if n_groups < n_splits:
        raise InputError(f"cannot make {n_splits} patient-level folds from {n_groups} distinct patients")
    dummy = np.zeros(len(groups))
    if y is None:
        splitter = GroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        return [(tr, va) for tr, va in splitter.split(dummy, groups=groups)]
    y = _1d(y, "y", length=len(groups))
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return [(tr, va) for tr, va in splitter.split(dummy, y, groups=groups)]


def train_val_split(
    groups: Sequence[Any] | np.ndarray, val_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """One random split into training and validation rows with no patient on both sides.

    Args:
        groups: (N,) patient/study id of each row.
        val_fraction: fraction of the *patients* (not rows) put in validation, in (0, 1); at least one patient.
        seed: random seed (same seed, same split).

    Returns:
        ``(train_index, val_index)`` int arrays indexing the N rows, both non-empty.
    """
    from sklearn.model_selection import GroupShuffleSplit

    groups = _1d(groups, "groups")
    if not 0.0 < val_fraction < 1.0:
        raise InputError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise InputError(f"a train/validation split needs at least 2 distinct patients, got {n_groups}")
    n_val = min(max(1, math.ceil(val_fraction * n_groups)), n_groups - 1)
    splitter = GroupShuffleSplit(n_splits=1, test_size=n_val, random_state=seed)
    train, val = next(splitter.split(np.zeros(len(groups)), groups=groups))
    return train, val


# ------------------------------------------------------------------------------------- confidence intervals
def bootstrap_ci(
    metric_fn: Callable[..., float],
    *arrays: Sequence[Any] | np.ndarray,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    groups: Sequence[Any] | np.ndarray | None = None,
) -> tuple[float, float, float]:
    """A metric and its percentile-bootstrap confidence interval.

    Rows are resampled with replacement (the same rows from every array). With ``groups``, whole patients are
    resampled instead (cluster bootstrap), which is the honest choice when a patient has several rows.
    Resamples on which the metric is undefined (``metric_fn`` raises ``ValueError``/``ZeroDivisionError``/
    :class:`MedDLError`, or returns NaN -- e.g. one class only) are skipped; if more than half are undefined an
    :class:`InputError` is raised.

    Args:
        metric_fn: ``metric_fn(*arrays) -> float`` on (resampled) arrays.
        *arrays: arrays with the same first dimension N.
        n_boot: number of bootstrap resamples.
        alpha: 1 - confidence level (0.05 gives a 95 % interval).
        seed: random seed (same seed, same interval).
        groups: optional (N,) patient id per row.

    Returns:
        ``(estimate, low, high)``: the metric on all rows and the ``alpha/2`` and ``1 - alpha/2`` percentiles.
    """
    if not arrays:
        raise InputError("bootstrap_ci needs at least one array")
    if not 0.0 < alpha < 1.0:
        raise InputError(f"alpha must be between 0 and 1, got {alpha}")
    if n_boot < 1:
        raise InputError(f"n_boot must be positive, got {n_boot}")
    data = [np.asarray(a) for a in arrays]
    n = len(data[0])
    for i, a in enumerate(data):
        if a.ndim == 0 or len(a) != n:
            raise InputError(f"bootstrap_ci: array {i} has {0 if a.ndim == 0 else len(a)} rows, expected {n}")
    if n == 0:
        raise InputError("bootstrap_ci: no rows")
    estimate = float(metric_fn(*data))

    values = np.full(n_boot, np.nan)
    for b, index in enumerate(bootstrap_indices(n, groups, n_boot, seed)):
        try:
            with warnings.catch_warnings():  # e.g. sklearn's UndefinedMetricWarning: counted below instead
                warnings.simplefilter("ignore")
                values[b] = float(metric_fn(*(a[index] for a in data)))
        except (ValueError, ZeroDivisionError, MedDLError):
            pass
    valid = values[np.isfinite(values)]
    if len(valid) < max(1, n_boot // 2):
        raise InputError(f"the metric is undefined on {n_boot - len(valid)} of {n_boot} bootstrap resamples "
                         "(too few rows or patients, or almost all of one class)")
    low, high = np.percentile(valid, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return estimate, float(low), float(high)


def bootstrap_indices(n: int, groups: Sequence[Any] | np.ndarray | None, n_boot: int,
                      seed: int) -> Iterator[np.ndarray]:
    """Row indices of ``n_boot`` bootstrap resamples of ``n`` rows (the one resampling :func:`bootstrap_ci` and
    :func:`roc_with_ci` share): rows drawn with replacement, or, with ``groups`` ((N,) e.g. patient IDs), whole
    groups drawn with replacement and all their rows taken."""
    if groups is None:
        members = None
        n_units = n
    else:
        _, inverse = np.unique(_1d(groups, "groups", length=n), return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        members = np.split(order, np.cumsum(np.bincount(inverse))[:-1])
        n_units = len(members)
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        pick = rng.integers(0, n_units, n_units)
        yield pick if members is None else np.concatenate([members[u] for u in pick])


def auroc_with_ci(
    y_true: Sequence[Any] | np.ndarray,
    y_score: Sequence[float] | np.ndarray,
    *,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    groups: Sequence[Any] | np.ndarray | None = None,
) -> tuple[float, float, float]:
    """Area under the ROC curve with a bootstrap confidence interval.

    Args:
        y_true: (N,) binary labels (0/1 or bool).
        y_score: (N,) scores, higher = more likely positive (probabilities or logits).
        n_boot, alpha, seed, groups: as in :func:`bootstrap_ci`.

    Returns:
        ``(auroc, low, high)``.

    Raises:
        InputError: ``y_true`` has only one class (AUROC is undefined then), is not binary, or has a length or
            finiteness problem.
    """
    from sklearn.metrics import roc_auc_score

    y_true = _binary(y_true, "y_true")
    y_score = _finite(_1d(y_score, "y_score", length=len(y_true)), "y_score")
    if len(np.unique(y_true)) < 2:
        raise InputError(f"AUROC is undefined: y_true has only one class ({int(y_true[0])}) in {len(y_true)} rows")
    return bootstrap_ci(roc_auc_score, y_true, y_score, n_boot=n_boot, alpha=alpha, seed=seed, groups=groups)


# ------------------------------------------------------------------------------------- segmentation overlap
def dice_per_volume(pred: np.ndarray, truth: np.ndarray, *, both_empty_is_one: bool = True) -> float:
    """Dice of one whole volume (one patient): ``2 |P & T| / (|P| + |T|)`` over all voxels at once.

    This is the honest segmentation metric (Buda et al. 2019): average it over patients and report mean and
    median. Both masks empty (a patient without tumour, correctly predicted) gives 1.0 by convention; with
    ``both_empty_is_one=False`` it gives NaN so such volumes can be left out with ``np.nanmean``. An empty truth
    with a non-empty prediction gives 0.0.

    Args:
        pred: (K, J, I) binary mask (bool or 0/1), any number of dimensions >= 2.
        truth: binary mask of the same shape.
    """
    p, t = _mask_pair(pred, truth, min_ndim=2)
    if not p.any() and not t.any():
        return 1.0 if both_empty_is_one else float("nan")
    from monai.metrics import compute_dice

    return float(compute_dice(_tensor(p)[None, None], _tensor(t)[None, None], ignore_empty=False).item())


def iou_per_volume(pred: np.ndarray, truth: np.ndarray, *, both_empty_is_one: bool = True) -> float:
    """Intersection over union (Jaccard) of one whole volume; empty conventions as in :func:`dice_per_volume`."""
    p, t = _mask_pair(pred, truth, min_ndim=2)
    if not p.any() and not t.any():
        return 1.0 if both_empty_is_one else float("nan")
    from monai.metrics import compute_iou

    return float(compute_iou(_tensor(p)[None, None], _tensor(t)[None, None], ignore_empty=False).item())


def dice_per_slice(pred: np.ndarray, truth: np.ndarray, include_empty: bool, axis: int = 0) -> np.ndarray:
    """PER-SLICE Dice: one value per 2D slice along ``axis`` -- not the per-patient metric.

    Reported for comparison with the Kaggle LGG notebooks, whose 0.946 averaged this with slices empty in
    both masks counted as 1.0 (and slice-level splits). Use :func:`dice_per_volume` for honest results.

    Args:
        pred: (K, J, I) binary mask.
        truth: binary mask of the same shape.
        include_empty: True keeps slices empty in both masks with Dice 1.0 (the inflated protocol); False drops
            them, so the result only has slices where at least one mask has a voxel.
        axis: slice axis (0 = K, the acquisition axis of a :class:`~MedDLLib.geometry.Volume` array).

    Returns:
        (S,) float array of per-slice Dice, S = number of kept slices.
    """
    p, t = _mask_pair(pred, truth, min_ndim=3)
    if p.ndim != 3:
        raise InputError(f"dice_per_slice expects 3D masks (K, J, I), got shape {p.shape}")
    p = np.moveaxis(p, axis, 0)
    t = np.moveaxis(t, axis, 0)
    if not include_empty:
        keep = p.reshape(len(p), -1).any(axis=1) | t.reshape(len(t), -1).any(axis=1)
        p, t = p[keep], t[keep]
    if len(p) == 0:
        return np.zeros(0)
    from monai.metrics import compute_dice

    dice = compute_dice(_tensor(p)[:, None], _tensor(t)[:, None], ignore_empty=False)
    return dice.numpy().reshape(-1).astype(float)


# --------------------------------------------------------------------------------------- classification loss
def weighted_log_loss(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    weights: Sequence[float] = RSNA2019_WEIGHTS,
) -> float:
    """The RSNA 2019 weighted multi-label log loss (lower is better; 1st place private score 0.0438).

    ``sum_j w_j * L_j / sum_j w_j`` where ``L_j`` is the binary log loss of label column ``j`` averaged over the
    N rows (sklearn ``log_loss``, probabilities clipped to machine epsilon).

    Args:
        y_true: (N, C) binary labels, columns in :data:`RSNA2019_LABELS` order with the default weights.
        y_prob: (N, C) predicted probabilities in [0, 1] (sigmoid outputs, not logits).
        weights: (C,) non-negative label weights; default :data:`RSNA2019_WEIGHTS` ("any" first, weight 2).
    """
    from sklearn.metrics import log_loss

    y_prob_arr = np.asarray(y_prob, dtype=float)
    y_true_arr = np.asarray(y_true)
    if y_true_arr.ndim != 2 or y_prob_arr.shape != y_true_arr.shape:
        raise InputError(f"weighted_log_loss expects y_true and y_prob of the same shape (N, C); "
                         f"got {y_true_arr.shape} and {y_prob_arr.shape}")
    w = np.asarray(weights, dtype=float)
    if w.shape != (y_true_arr.shape[1],) or (w < 0).any() or w.sum() <= 0:
        raise InputError(f"weights must be {y_true_arr.shape[1]} non-negative numbers (not all 0), got {list(w)}")
    y_true_arr = _binary(y_true_arr, "y_true")
    _finite(y_prob_arr, "y_prob")
    if (y_prob_arr < 0).any() or (y_prob_arr > 1).any():
        raise InputError("y_prob must be probabilities in [0, 1] (apply a sigmoid to logits first)")
    per_label = np.array([log_loss(y_true_arr[:, j], y_prob_arr[:, j], labels=[0, 1])
                          for j in range(y_true_arr.shape[1])])
    return float((w * per_label).sum() / w.sum())


# --------------------------------------------------------------------------------------------------- survival
def concordance_index(
    time: Sequence[float] | np.ndarray,
    risk: Sequence[float] | np.ndarray,
    event: Sequence[Any] | np.ndarray | None = None,
) -> float:
    """Harrell's C-index of a *risk* score (higher risk = shorter survival), via lifelines.

    lifelines' ``concordance_index`` expects a score where higher means *longer* survival, so the risk is
    negated here. 1.0: risks perfectly ordered; 0.5: random; 0.0: perfectly reversed.

    Args:
        time: (N,) follow-up time (any unit), >= 0.
        risk: (N,) predicted risk (e.g. Cox linear predictor, probability of death).
        event: (N,) 1 = death observed at ``time``, 0 = censored; None means all observed.

    Raises:
        InputError: no comparable pair (e.g. no event), bad lengths or non-finite values.
    """
    from lifelines.utils import concordance_index as lifelines_cindex

    t, r, e = _survival_inputs(time, risk, event)
    try:
        return float(lifelines_cindex(t, -r, e))
    except ZeroDivisionError as exc:
        raise InputError(f"C-index is undefined: no comparable pairs ({int(e.sum())} events in {len(t)} "
                         "patients)") from exc


def concordance_index_with_ci(
    time: Sequence[float] | np.ndarray,
    risk: Sequence[float] | np.ndarray,
    event: Sequence[Any] | np.ndarray | None = None,
    *,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float]:
    """:func:`concordance_index` with a patient-level bootstrap confidence interval: ``(c, low, high)``."""
    t, r, e = _survival_inputs(time, risk, event)
    return bootstrap_ci(concordance_index, t, r, e, n_boot=n_boot, alpha=alpha, seed=seed)


def risk_groups(risk: Sequence[float] | np.ndarray, n_groups: int = 2) -> np.ndarray:
    """Split patients into risk groups at quantiles of the predicted risk.

    Returns:
        (N,) str array: ``"low"``/``"high"`` for 2 groups (split at the median, ties go to ``"low"``), else
        ``"Q1"`` (lowest risk) .. ``"Qn"``.
    """
    r = _finite(_1d(risk, "risk").astype(float), "risk")
    if n_groups < 2:
        raise InputError(f"n_groups must be at least 2, got {n_groups}")
    cuts = np.quantile(r, np.linspace(0, 1, n_groups + 1)[1:-1])
    index = np.searchsorted(cuts, r, side="left")
    names = np.array(["low", "high"] if n_groups == 2 else [f"Q{i + 1}" for i in range(n_groups)])
    return names[index]


def kaplan_meier_groups(
    time: Sequence[float] | np.ndarray,
    event: Sequence[Any] | np.ndarray | None,
    group: Sequence[Any] | np.ndarray,
) -> dict[str, Any]:
    """Kaplan-Meier curve of each group and a log-rank test between the groups (lifelines).

    Args:
        time: (N,) follow-up time.
        event: (N,) 1 = event observed, 0 = censored (None: all observed).
        group: (N,) group label of each patient (e.g. from :func:`risk_groups`).

    Returns:
        JSON-ready dict: ``{"groups": {label: {"n", "events", "median_time" (None if the curve never reaches
        0.5), "time", "survival", "ci_low", "ci_high"}}, "logrank_statistic", "logrank_p", "test"}``.
        ``logrank_p`` and ``logrank_statistic`` are None with a single group (nothing to compare). With two
        groups the multivariate log-rank test equals the two-sample test.
    """
    from lifelines import KaplanMeierFitter
    from lifelines.statistics import multivariate_logrank_test

    t, _, e = _survival_inputs(time, np.zeros(len(np.asarray(time))), event)
    g = _1d(group, "group", length=len(t)).astype(str)
    result: dict[str, Any] = {"groups": {}, "test": "log-rank"}
    for label in sorted(str(v) for v in np.unique(g)):
        sel = g == label
        kmf = KaplanMeierFitter(label=label).fit(t[sel], event_observed=e[sel])
        ci = kmf.confidence_interval_survival_function_
        median = float(kmf.median_survival_time_)
        result["groups"][label] = {
            "n": int(sel.sum()),
            "events": int(e[sel].sum()),
            "median_time": median if math.isfinite(median) else None,
            "time": kmf.survival_function_.index.to_numpy(dtype=float).tolist(),
            "survival": kmf.survival_function_.iloc[:, 0].to_numpy(dtype=float).tolist(),
            "ci_low": ci.iloc[:, 0].to_numpy(dtype=float).tolist(),
            "ci_high": ci.iloc[:, 1].to_numpy(dtype=float).tolist(),
        }
    if len(result["groups"]) >= 2:
        test = multivariate_logrank_test(t, g, e)
        result["logrank_statistic"] = float(test.test_statistic)
        result["logrank_p"] = float(test.p_value)
    else:
        result["logrank_statistic"] = None
        result["logrank_p"] = None
    return result


def number_at_risk(
    time: Sequence[float] | np.ndarray,
    group: Sequence[Any] | np.ndarray,
    at_times: Sequence[float] | np.ndarray,
) -> dict[str, list[int]]:
    """The number at risk of each group at each time: patients whose follow-up ``time >= t`` (neither the event
    nor censoring has happened before ``t``), the convention of the table printed under a Kaplan-Meier plot.

    Args:
        time: (N,) follow-up time (event or censoring), >= 0.
        group: (N,) group label of each patient.
        at_times: (K,) times at which to count, in the unit of ``time``.

    Returns:
        ``{label: [count at at_times[0], ...]}`` with the labels sorted as in :func:`kaplan_meier_groups`.
    """
    t = _finite(_1d(time, "time").astype(float), "time")
    g = _1d(group, "group", length=len(t)).astype(str)
    at = np.asarray(at_times, dtype=float).reshape(-1)
    return {label: [int(np.sum((g == label) & (t >= v))) for v in at] for label in sorted(set(g.tolist()))}


def plot_kaplan_meier(
    time: Sequence[float] | np.ndarray,
    event: Sequence[Any] | np.ndarray | None,
    group: Sequence[Any] | np.ndarray,
    path_png: str | os.PathLike,
    *,
    title: str = "Kaplan-Meier survival by group",
    time_label: str = "time",
) -> Path:
    """Write a PNG of the Kaplan-Meier curves (with 95 % bands) of each group, the log-rank p-value and, under the
    plot, the number-at-risk table (:func:`number_at_risk` at the x-axis ticks).

    Args: as in :func:`kaplan_meier_groups`; ``time_label`` names the x axis with its unit (e.g. "time (days)").

    Returns:
        The path written (atomically).
    """
    from matplotlib.ticker import MaxNLocator

    km = kaplan_meier_groups(time, event, group)
    t_max = float(np.max(np.asarray(time, dtype=float)))
    ticks = [float(v) for v in MaxNLocator(nbins=6).tick_values(0.0, t_max) if 0.0 <= v <= t_max] or [0.0]
    at_risk = number_at_risk(time, group, ticks)
    n_groups = len(km["groups"])
    fig = _figure((6.0, 4.5 + 0.3 * n_groups))
    ax, table_ax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [4.0, 0.45 + 0.3 * n_groups]})
    colours = {}
    for label, curve in km["groups"].items():
        line = ax.step(curve["time"], curve["survival"], where="post",
                       label=f"{label} (n={curve['n']}, events={curve['events']})")[0]
        colours[label] = line.get_color()
        ax.fill_between(curve["time"], curve["ci_low"], curve["ci_high"], step="post", alpha=0.2,
                        color=line.get_color(), linewidth=0)
    if km["logrank_p"] is not None:
        ax.text(0.98, 0.98, f"log-rank p = {km['logrank_p']:.3g}", transform=ax.transAxes, ha="right", va="top")
    ax.set(ylabel="survival probability", title=title, ylim=(0.0, 1.05), xlim=(0.0, max(ticks[-1], t_max) * 1.02))
    ax.legend(loc="lower left")
    ax.grid(alpha=0.3)
    ax.tick_params(labelbottom=True)
    # the number-at-risk table: one row per group, one column per x tick, aligned with the plot's axis
    table_ax.set_xticks(ticks)
    table_ax.set_yticks(range(n_groups), labels=list(at_risk)[::-1])
    table_ax.set_ylim(-0.6, n_groups - 0.4)
    for row, (label, counts) in enumerate(reversed(list(at_risk.items()))):
        for v, count in zip(ticks, counts):
            table_ax.text(v, row, str(count), ha="center", va="center", color=colours.get(label, "black"))
    table_ax.set_title("number at risk", fontsize="small", loc="left")
    table_ax.tick_params(left=False, bottom=False, labelbottom=False, pad=14)
    for side in ("top", "right", "bottom", "left"):
        table_ax.spines[side].set_visible(False)
    ax.set_xlabel(time_label)
    return save_figure_png(fig, path_png)


# ---------------------------------------------------------------------------------------------------------- ROC
def roc_with_ci(
    y_true: Sequence[Any] | np.ndarray,
    y_score: Sequence[float] | np.ndarray,
    *,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    groups: Sequence[Any] | np.ndarray | None = None,
    n_grid: int = 101,
) -> dict[str, Any]:
    """The ROC curve with a pointwise bootstrap band and the AUROC with its CI.

    The band is the ``alpha/2`` and ``1 - alpha/2`` percentiles, at each false-positive rate of an even grid, of
    the true-positive rate of the bootstrap resamples (vertical averaging; rows, or whole ``groups``, resampled
    as in :func:`bootstrap_ci`; resamples with one class only are skipped). The AUROC CI is
    :func:`auroc_with_ci`'s with the same resamples' seed.

    Args:
        y_true: (N,) binary labels; y_score: (N,) scores, higher = more likely positive.
        n_boot, alpha, seed, groups: as in :func:`bootstrap_ci`.
        n_grid: number of false-positive rates in [0, 1] for the band.

    Returns:
        JSON-ready dict: ``fpr``, ``tpr`` (the curve on all rows), ``grid_fpr``, ``band_low``, ``band_high``
        (each ``n_grid`` long), ``auroc``, ``auroc_ci_low``, ``auroc_ci_high``, ``n``, ``n_positive``.
    """
    from sklearn.metrics import roc_curve

    auc, low, high = auroc_with_ci(y_true, y_score, n_boot=n_boot, alpha=alpha, seed=seed, groups=groups)
    y = _binary(y_true, "y_true")
    s = np.asarray(y_score, dtype=float)
    fpr, tpr, _ = roc_curve(y, s)
    grid = np.linspace(0.0, 1.0, n_grid)
    curves = []
    for index in bootstrap_indices(len(y), groups, n_boot, seed):
        yb, sb = y[index], s[index]
        if yb.min() == yb.max():
            continue
        f, t, _ = roc_curve(yb, sb)
        curves.append(np.interp(grid, f, t))
    band = np.percentile(np.array(curves), [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=0)
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "grid_fpr": grid.tolist(), "band_low": band[0].tolist(),
            "band_high": band[1].tolist(), "auroc": auc, "auroc_ci_low": low, "auroc_ci_high": high,
            "n": int(len(y)), "n_positive": int(y.sum())}


def plot_roc(
    y_true: Sequence[Any] | np.ndarray,
    y_score: Sequence[float] | np.ndarray,
    path_png: str | os.PathLike,
    *,
    title: str = "ROC curve",
    n_boot: int = 1000,
    seed: int = 0,
    groups: Sequence[Any] | np.ndarray | None = None,
) -> dict[str, Any]:
    """Write a PNG of the ROC curve with its 95 % bootstrap band (:func:`roc_with_ci`) and the chance line.

    Returns:
        :func:`roc_with_ci`'s dict without the curve arrays, plus ``path`` (the PNG written atomically).
    """
    roc = roc_with_ci(y_true, y_score, n_boot=n_boot, seed=seed, groups=groups)
    fig = _figure((5.0, 5.0))
    ax = fig.subplots()
    ax.fill_between(roc["grid_fpr"], roc["band_low"], roc["band_high"], color="tab:blue", alpha=0.2, linewidth=0,
                    label="95 % bootstrap band")
    ax.plot(roc["fpr"], roc["tpr"], color="tab:blue",
            label=f"AUROC {roc['auroc']:.3f} (95 % CI {roc['auroc_ci_low']:.3f}-{roc['auroc_ci_high']:.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    ax.set(xlabel="false-positive rate (1 - specificity)", ylabel="true-positive rate (sensitivity)",
           title=f"{title} (n={roc['n']}, {roc['n_positive']} positive)", xlim=(0, 1), ylim=(0, 1.01))
    ax.set_aspect("equal")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    path = save_figure_png(fig, path_png)
    keys = ("auroc", "auroc_ci_low", "auroc_ci_high", "n", "n_positive")
    return {**{k: roc[k] for k in keys}, "path": str(path)}


def classifier_figures(
    y_true: Sequence[Any] | np.ndarray,
    y_prob: Sequence[float] | np.ndarray,
    folder: str | os.PathLike,
    *,
    what: str,
    prefix: str = "",
    n_boot: int = 1000,
    seed: int = 0,
    groups: Sequence[Any] | np.ndarray | None = None,
) -> dict[str, Any]:
    """The ROC curve (with CI band) and the reliability diagram (with ECE) of a binary classifier, as
    ``folder/<prefix>roc.png`` and ``folder/<prefix>reliability.png``.

    Args:
        y_true: (N,) binary labels; y_prob: (N,) predicted probabilities in [0, 1].
        what: what is classified, for the titles (e.g. "MGMT methylated, per study").
        groups: (N,) patient/study of each row: the ROC band resamples whole groups.

    Returns:
        Flat metrics to merge into ``metrics.json``: ``<prefix>roc_png``, ``<prefix>reliability_png`` (absolute
        paths), ``<prefix>ece``, ``<prefix>brier``.
    """
    folder = Path(folder).resolve()
    roc = plot_roc(y_true, y_prob, folder / f"{prefix}roc.png", title=f"ROC: {what}", n_boot=n_boot, seed=seed,
                   groups=groups)
    cal = reliability_diagram(y_true, y_prob, folder / f"{prefix}reliability.png",
                              title=f"Reliability: {what}")
    return {f"{prefix}roc_png": roc["path"], f"{prefix}reliability_png": cal["path"], f"{prefix}ece": cal["ece"],
            f"{prefix}brier": cal["brier"]}


# ------------------------------------------------------------------------------------------------ calibration
def reliability_diagram(
    y_true: Sequence[Any] | np.ndarray,
    y_prob: Sequence[float] | np.ndarray,
    path_png: str | os.PathLike,
    n_bins: int = 10,
    strategy: str = "uniform",
    title: str = "Reliability diagram",
) -> dict[str, Any]:
    """Calibration of predicted probabilities: a reliability diagram PNG plus numbers.

    The curve comes from sklearn ``calibration_curve``; the expected calibration error (ECE) is
    ``sum_b (n_b / N) |observed_b - predicted_b|`` over the non-empty bins, and the Brier score is sklearn's.

    Args:
        y_true: (N,) binary labels.
        y_prob: (N,) predicted probabilities of the positive class, in [0, 1].
        path_png: where the PNG is written (atomically).
        n_bins: number of bins; ``strategy`` "uniform" (equal width) or "quantile" (equal count).

    Returns:
        JSON-ready dict ``{"ece", "brier", "n_bins", "strategy", "bins": [{"predicted", "observed", "count"}],
        "path"}`` (only non-empty bins listed).
    """
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import brier_score_loss

    y = _binary(y_true, "y_true")
    p = _finite(_1d(y_prob, "y_prob", length=len(y)).astype(float), "y_prob")
    if (p < 0).any() or (p > 1).any():
        raise InputError("y_prob must be probabilities in [0, 1]")
    if n_bins < 1:
        raise InputError(f"n_bins must be positive, got {n_bins}")
    if strategy not in ("uniform", "quantile"):
        raise InputError(f"strategy must be 'uniform' or 'quantile', got {strategy!r}")
    observed, predicted = calibration_curve(y, p, n_bins=n_bins, strategy=strategy)
    # Bin counts with calibration_curve's own bin edges and assignment rule (searchsorted on the inner edges).
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    else:
        edges = np.percentile(p, np.linspace(0, 100, n_bins + 1))
    counts = np.bincount(np.searchsorted(edges[1:-1], p), minlength=n_bins)
    counts = counts[counts > 0]
    if len(counts) != len(observed):  # pragma: no cover - guards against a change in sklearn's binning
        raise RuntimeError("bin counts do not match sklearn.calibration.calibration_curve")
    ece = float(np.sum(counts / len(p) * np.abs(observed - predicted)))
    brier = float(brier_score_loss(y, p))

    fig = _figure((5.0, 6.0))
    ax, hist = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    ax.plot(predicted, observed, marker="o", label=f"model (ECE = {ece:.3f}, Brier = {brier:.3f})")
    ax.set(ylabel="observed fraction of positives", title=title, xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    hist.hist(p, bins=np.linspace(0.0, 1.0, n_bins + 1), color="tab:blue", alpha=0.7)
    hist.set(xlabel="predicted probability", ylabel="count")
    path = save_figure_png(fig, path_png)
    return {
        "ece": ece,
        "brier": brier,
        "n_bins": int(n_bins),
        "strategy": strategy,
        "bins": [{"predicted": float(a), "observed": float(b), "count": int(c)}
                 for a, b, c in zip(predicted, observed, counts)],
        "path": str(path),
    }


# ------------------------------------------------------------------------------------------------ PNG output
def save_figure_png(fig: Any, path_png: str | os.PathLike, dpi: int = 120) -> Path:
    """Save a matplotlib figure as PNG atomically (temporary file in the same folder, then rename)."""
    from .io import atomic_path

    with atomic_path(path_png, ".png") as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    return Path(path_png)


def _figure(size_in: tuple[float, float]) -> Any:
    """A matplotlib Figure drawn with the Agg canvas, independent of pyplot and of the GUI backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size_in, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


# ------------------------------------------------------------------------------------------------ validation
def _1d(values: Any, name: str, length: int | None = None) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise InputError(f"{name} must be a 1D array, got shape {arr.shape}")
    if length is not None and len(arr) != length:
        raise InputError(f"{name} has {len(arr)} values, expected {length}")
    if len(arr) == 0:
        raise InputError(f"{name} is empty")
    return arr


def _finite(arr: np.ndarray, name: str) -> np.ndarray:
    if not np.isfinite(np.asarray(arr, dtype=float)).all():
        raise InputError(f"{name} contains NaN or infinite values")
    return arr


def _binary(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.size == 0:
        raise InputError(f"{name} is empty")
    if arr.dtype != bool and not ((arr == 0) | (arr == 1)).all():
        raise InputError(f"{name} must be binary (0/1 or bool), got values {np.unique(arr)[:5].tolist()}")
    return arr.astype(int)


def _mask_pair(pred: Any, truth: Any, min_ndim: int) -> tuple[np.ndarray, np.ndarray]:
    p, t = np.asarray(pred), np.asarray(truth)
    if p.shape != t.shape:
        raise InputError(f"prediction and truth masks differ in shape: {p.shape} vs {t.shape}")
    if p.ndim < min_ndim:
        raise InputError(f"masks must have at least {min_ndim} dimensions, got shape {p.shape}")
    for arr, name in ((p, "prediction"), (t, "truth")):
        if arr.dtype != bool and not ((arr == 0) | (arr == 1)).all():
            raise InputError(f"{name} mask must be binary (bool or 0/1); threshold probabilities or select "
                             f"one label first (values seen: {np.unique(arr)[:5].tolist()})")
    return p.astype(bool), t.astype(bool)


def _tensor(mask: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float64))


def _survival_inputs(time: Any, risk: Any, event: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = _finite(_1d(time, "time").astype(float), "time")
    if (t < 0).any():
        raise InputError("time must be non-negative")
    r = _finite(_1d(risk, "risk", length=len(t)).astype(float), "risk")
    e = np.ones(len(t), dtype=int) if event is None else _binary(_1d(event, "event", length=len(t)), "event")
    return t, r, e
