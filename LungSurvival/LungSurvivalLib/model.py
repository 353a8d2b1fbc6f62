"""LungSurvival networks and the two training recipes, on :func:`MedDLLib.training.train`.

``seed`` (the published recipe): the 20 middle slices of the scan at 2 mm, the whole field of view resized to
``size x size`` (224 in the paper), lungs only, HU clipped to [-1000, 400] and scaled to [0, 1]; the small 3D
CNN (:class:`SmallCNN3D`: three conv blocks, a fully connected layer to 2 classes); 2-class cross-entropy on
"died before the training cohort's median follow-up time" (censored patients count as survivors: the recipe
ignores censoring); Adam 1e-3, batch 4; accuracy. Its risk score is the probability of the short-survival class.

``improved``: the input is a cube of 80 mm centred on the tumour candidate (the largest solid component inside
the lungs, :func:`~LungSurvivalLib.preprocess.tumour_candidate`; the lung region when there is none), lungs
only; the same network with one output, a log-hazard ratio, trained with the Cox partial likelihood on time and
event (:class:`CoxLoss`, Breslow ties); Adam 1e-3 with weight decay, batch 16, flips as augmentation; the best
epoch by the validation C-index. Both recipes split patients, never slices, into training and validation.

Evaluation (:func:`evaluate_model`): Harrell's C-index with a bootstrap CI, Kaplan-Meier curves of the
predicted low/high-risk groups (split at the training cohort's median risk, stored in the package) with the
log-rank p-value (lifelines, via :mod:`MedDLLib.evaluation`), and for the seed its accuracy with a CI.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from MedDLLib import models
from MedDLLib.errors import InputError

from .dataset import LungStudy
from .preprocess import InputSpec, network_input, segment_lungs

TASK = "lung"
VERSION = "1.0.0"
#: The model card's caveat, stored in every package and shown with every risk.
CAVEAT = ("Research use only, not a medical device. The risk is relative to the training cohort (a log-hazard "
          "ratio, not a survival time); published CT survival models reach C-index 0.65-0.70 on external data. "
          "Models trained on MedDL phantoms know nothing about real patients.")


# ---------------------------------------------------------------------------------------------- network
class SmallCNN3D(nn.Module):
    """The seed recipe's small 3D CNN: three conv(3x3x3)-BN-ReLU blocks (two with max-pooling), global average
    pooling and a fully connected layer. ``(B, C, D, H, W) -> (B, num_outputs)``; any input size >= 4."""

    def __init__(self, in_channels: int = 1, num_outputs: int = 2, width: int = 8) -> None:
        super().__init__()
        w = int(width)
        self.features = nn.Sequential(
            nn.Conv3d(in_channels, w, 3, padding=1), nn.BatchNorm3d(w), nn.ReLU(), nn.MaxPool3d(2),
            nn.Conv3d(w, 2 * w, 3, padding=1), nn.BatchNorm3d(2 * w), nn.ReLU(), nn.MaxPool3d(2),
            nn.Conv3d(2 * w, 4 * w, 3, padding=1), nn.BatchNorm3d(4 * w), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.classifier = nn.Linear(4 * w, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


models.register_network("lung.cnn3d", SmallCNN3D)
GRADCAM_LAYER = "features.8"


class CoxLoss(nn.Module):
    """Negative Cox partial log-likelihood (Breslow) of log-hazard ``risk (B,)`` or ``(B, 1)`` for
    ``target (B, 2)`` = (time, event), averaged over the events; 0 (with a gradient) for a batch without event."""

    def forward(self, risk: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        risk = risk.reshape(-1).float()
        time, event = target[:, 0].float(), target[:, 1].float()
        order = torch.argsort(time, descending=True)
        risk, time, event = risk[order], time[order], event[order]
        log_cum = torch.logcumsumexp(risk, dim=0)
        # ties: everyone with the same time is in each other's risk set (Breslow)
        _, inverse, counts = torch.unique_consecutive(time, return_inverse=True, return_counts=True)
        last = torch.cumsum(counts, 0) - 1
        log_risk_set = log_cum[last[inverse]]
        n_events = event.sum()
        if n_events == 0:
            return risk.sum() * 0.0
        return -((risk - log_risk_set) * event).sum() / n_events


# ---------------------------------------------------------------------------------------------- recipes
@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    spec: InputSpec
    num_outputs: int
    batch_size: int
    epochs: int
    metric: str
    weight_decay: float
    augment: bool


def recipe(name: str, size: int | None = None) -> Recipe:
    """The ``seed`` or ``improved`` recipe; ``size`` overrides the in-plane (seed, 224) or cube (improved, 32) size."""
    if name == "seed":
        return Recipe("seed", InputSpec(mode="middle", size=size or 224, n_slices=20, slice_mm=2.0), 2, 4, 100,
                      "accuracy", 0.0, True)
    if name == "improved":
        return Recipe("improved", InputSpec(mode="crop", size=size or 32, crop_mm=80.0), 1, 16, 60, "c_index",
                      1e-4, True)
    raise InputError(f"unknown recipe {name!r}; expected 'seed' or 'improved'")


def seed_labels(time: np.ndarray, event: np.ndarray, cut_days: float) -> np.ndarray:
    """The seed's classes: 1 = death observed at or before ``cut_days``, else 0 (censored = survivor)."""
    return ((np.asarray(event) == 1) & (np.asarray(time, dtype=float) <= cut_days)).astype(np.int64)


# ---------------------------------------------------------------------------------------------- samples
@dataclasses.dataclass(frozen=True)
class Sample:
    """One cached network input and its targets."""

    path: str
    patient_id: str
    time_days: float
    event: int
    label: int


def prepare_study(study: LungStudy, spec: InputSpec) -> np.ndarray:
    """Network input ``(1, D, H, W)`` of a study (read, segment the lungs, crop/resample)."""
    volume = study.read()
    seg = segment_lungs(volume)
    return network_input(volume, seg.labels, spec)[0]


def cache_samples(studies: Sequence[LungStudy], spec: InputSpec, folder: Path, cut_days: float,
                  progress: Callable[[str], None] | None = None) -> list[Sample]:
    """Preprocess every study once into ``folder/<patient>.npy``; studies that fail are skipped and reported."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for n, study in enumerate(studies):
        try:
            x = prepare_study(study, spec)
        except InputError as exc:
            if progress:
                progress(f"skipped {study.patient_id}: {exc}")
            continue
        path = folder / f"{n:05d}.npy"
        np.save(path, x)
        label = int(seed_labels(np.array([study.time_days]), np.array([study.event]), cut_days)[0])
        out.append(Sample(str(path), study.patient_id, study.time_days, study.event, label))
    return out


def _load(sample: Sample, target: str) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(np.load(sample.path))
    if target == "class":
        return x, torch.tensor(sample.label, dtype=torch.long)
    return x, torch.tensor([sample.time_days, float(sample.event)], dtype=torch.float32)


def _flip(sample: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Augmentation: random flips along each axis of ``(C, D, H, W)``."""
    x, y = sample
    dims = [d for d in (1, 2, 3) if torch.rand(()) < 0.5]
    return (torch.flip(x, dims=dims) if dims else x), y


# ---------------------------------------------------------------------------------------------- metrics
def _validate_fn(recipe_name: str):
    from MedDLLib.evaluation import concordance_index
    from MedDLLib.training import predict_loader

    def validate(network: nn.Module, loader: Any, device: torch.device) -> dict[str, float]:
        outputs, targets = predict_loader(network, loader, device)
        outputs = outputs.float()
        if recipe_name == "seed":
            prob = torch.softmax(outputs, dim=1)[:, 1].numpy()
            acc = float(((prob >= 0.5).astype(int) == targets.numpy()).mean())
            loss = float(nn.functional.cross_entropy(outputs, targets.long()))
            return {"accuracy": acc, "loss": loss}
        time, event = targets[:, 0].numpy(), targets[:, 1].numpy()
        risk = outputs.reshape(-1).numpy()
        result = {"loss": float(CoxLoss()(outputs, targets))}
        try:
            result["c_index"] = concordance_index(time, risk, event)
        except InputError:
            result["c_index"] = 0.5
        return result

    return validate


def risk_scores(outputs: torch.Tensor | np.ndarray, recipe_name: str) -> np.ndarray:
    """Risk per study from network outputs: the log-hazard (improved) or P(short survival) (seed)."""
    t = torch.as_tensor(np.asarray(outputs, dtype=np.float32))
    if recipe_name == "seed":
        return torch.softmax(t, dim=1)[:, 1].numpy().astype(np.float64)
    return t.reshape(-1).numpy().astype(np.float64)


# ---------------------------------------------------------------------------------------------- training
def train_model(studies: Sequence[LungStudy], out: str | Path, recipe_name: str = "improved", *,
                epochs: int | None = None, max_minutes: float | None = None, batch_size: int | None = None,
                size: int | None = None, seed: int = 0, device: str | None = None, force_cpu: bool = False,
                description: str = "", kind: str = "synthetic",
                progress: Callable[[str], None] | None = None) -> Any:
    """Train one recipe on ``studies`` (patients split into training/validation) and write the package ``out``.

    Returns:
        :class:`MedDLLib.training.TrainResult`; the package's ``output`` holds ``risk_threshold`` (the median
        training risk, which splits low and high risk) and the caveat.
    """
    from MedDLLib.datasets import FileDataset
    from MedDLLib.evaluation import train_val_split
    from MedDLLib.training import TrainConfig, train

    r = recipe(recipe_name, size)
    studies = list(studies)
    if len(studies) < 4:
        raise InputError(f"need at least 4 usable studies to train, got {len(studies)}")
    train_idx, val_idx = train_val_split([s.patient_id for s in studies], 0.2, seed)
    train_studies, val_studies = [studies[i] for i in train_idx], [studies[i] for i in val_idx]
    cut_days = float(np.median([s.time_days for s in train_studies]))
    with tempfile.TemporaryDirectory(prefix="meddl-lung-") as tmp:
        train_samples = cache_samples(train_studies, r.spec, Path(tmp) / "train", cut_days, progress)
        val_samples = cache_samples(val_studies, r.spec, Path(tmp) / "val", cut_days, progress)
        if not train_samples or not val_samples:
            raise InputError("no usable training or validation study after preprocessing")
        target = "class" if r.name == "seed" else "survival"
        load = functools.partial(_load, target=target)
        train_ds = FileDataset(train_samples, load, transform=_flip if r.augment else None)
        val_ds = FileDataset(val_samples, load)
        torch.manual_seed(seed)
        args = {"in_channels": 1, "num_outputs": r.num_outputs, "width": 8}
        network = models.build_network({"task": TASK, "network": {"name": "lung.cnn3d", "args": args}})
        labels = ["short_survival_probability"] if r.name == "seed" else ["log_hazard_ratio"]
        metadata = {
            "task": TASK, "version": VERSION, "recipe": r.name,
            "network": {"name": "lung.cnn3d", "args": args},
            "input": r.spec.to_metadata(),
            "output": {"labels": labels, "kind": "class" if r.name == "seed" else "risk",
                       "gradcam_layer": GRADCAM_LAYER, "seed_cut_days": cut_days, "caveat": CAVEAT},
            "training_data": {"kind": kind, "n_studies": len(train_samples), "n_validation": len(val_samples),
                              "description": description or f"{len(train_samples)} training and "
                                                            f"{len(val_samples)} validation studies (TCIA layout)"},
            "metrics": {},
        }
        bs = batch_size or r.batch_size
        config = TrainConfig(out=Path(out), epochs=epochs or r.epochs, max_minutes=max_minutes, batch_size=bs,
                             lr=1e-3, seed=seed, device=device, force_cpu=force_cpu, metric=r.metric,
                             metric_mode="max", drop_last=len(train_samples) > bs)
        result = train(network, train_ds, val_ds,
                       nn.CrossEntropyLoss() if r.name == "seed" else CoxLoss(), config, metadata=metadata,
                       optimizer_factory=functools.partial(torch.optim.AdamW if r.weight_decay else torch.optim.Adam,
                                                           lr=1e-3, weight_decay=r.weight_decay),
                       validate_fn=_validate_fn(r.name))
        # the low/high split: the median risk of the training studies (stored, so inference is reproducible)
        package = models.load_package(result.package)
        net = package.network("cpu")
        train_x = np.stack([np.load(s.path) for s in train_samples])
        risks = risk_scores(predict_inputs(net, train_x), r.name)
        meta = dict(package.metadata)
        meta["output"] = {**meta["output"], "risk_threshold": float(np.median(risks))}
        for key in ("format", "sha256", "libraries", "created"):
            meta.pop(key, None)
        models.save_package(result.package, package.state_dict, meta)
    return result


# ---------------------------------------------------------------------------------------------- prediction
def untrained_package(folder: str | Path, seed: int = 0, *, width: int = 4, size: int = 16) -> Path:
    """An improved-recipe package with seeded random weights at ``folder/lung-selftest`` (self-tests, benchmarks:
    the output contract does not depend on the weights). ``width``/``size``: the network's first width and the
    crop cube's side (the improved recipe trains width 8 on 32^3, :func:`recipe`)."""
    torch.manual_seed(seed)
    args = {"in_channels": 1, "num_outputs": 1, "width": int(width)}
    network = SmallCNN3D(**args)
    metadata = {
        "task": TASK, "version": "0.0.1", "recipe": "improved",
        "network": {"name": "lung.cnn3d", "args": args},
        "input": InputSpec(mode="crop", size=int(size)).to_metadata(),
        "output": {"labels": ["log_hazard_ratio"], "kind": "risk", "gradcam_layer": GRADCAM_LAYER,
                   "risk_threshold": 0.0, "caveat": CAVEAT},
        "training_data": {"kind": "synthetic", "n_studies": 0, "description": "seeded random self-test weights"},
        "metrics": {},
    }
    return models.save_package(Path(folder) / "lung-selftest", network, metadata)


def predict_inputs(network: nn.Module, inputs: np.ndarray, batch_size: int = 16, device: Any = "cpu",
                   package: models.ModelPackage | None = None) -> np.ndarray:
    """Raw network outputs ``(N, n_outputs)`` for inputs ``(N, 1, D, H, W)``.

    The forward runs on the runtime :func:`MedDLLib.runtime.runner_for` chooses (outputs within 1e-3 of torch
    fp32; torch when no package is known or no runtime agrees).
    """
    from MedDLLib import runtime

    run = runtime.runner_for(network, package, agree=runtime.probabilities_agree("identity"))
    return np.concatenate([run(inputs[i:i + batch_size]) for i in range(0, len(inputs), batch_size)])


def evaluate_model(model: str | Path | models.ModelPackage, studies: Sequence[LungStudy], *,
                   km_png: str | Path | None = None, n_boot: int = 1000, device: Any = "cpu") -> dict[str, Any]:
    """Flat metrics of a model on held-out studies with known survival.

    Keys: ``recipe``, ``n_studies``, ``n_events``, ``c_index``, ``c_index_ci_low``, ``c_index_ci_high``,
    ``logrank_p`` (low vs high predicted risk, split at the package's ``risk_threshold``; at the median
    if that leaves one group empty), ``risk_split``; for the seed also ``accuracy`` (+ ``_ci_low``,
    ``_ci_high``) of its 2-class label. Writes the Kaplan-Meier PNG to ``km_png`` when given.
    """
    from MedDLLib import runtime
    from MedDLLib.evaluation import bootstrap_ci, concordance_index_with_ci, kaplan_meier_groups, plot_kaplan_meier

    network, package = models.load_task_model(model, TASK, device)
    spec = InputSpec.from_metadata(package.metadata["input"])
    recipe_name = package.metadata.get("recipe", "improved")
    xs, times, events, ids = [], [], [], []
    for study in studies:
        xs.append(prepare_study(study, spec))
        times.append(study.time_days)
        events.append(study.event)
        ids.append(study.patient_id)
    if len(xs) < 2:
        raise InputError(f"need at least 2 studies to evaluate, got {len(xs)}")
    risk = risk_scores(predict_inputs(network, np.stack(xs), device=device, package=package), recipe_name)
    t, e = np.array(times, float), np.array(events, int)
    c, lo, hi = concordance_index_with_ci(t, risk, e, n_boot=n_boot)
    threshold = package.metadata["output"].get("risk_threshold")
    groups = np.where(risk > threshold, "high", "low") if threshold is not None else None
    split = "training median"
    if groups is None or len(set(groups)) < 2:
        from MedDLLib.evaluation import risk_groups

        groups, split = risk_groups(risk), "median of these studies"
    km = kaplan_meier_groups(t, e, groups)
    metrics: dict[str, Any] = {"recipe": recipe_name, "n_studies": len(xs), "n_events": int(e.sum()),
                               "c_index": c, "c_index_ci_low": lo, "c_index_ci_high": hi,
                               "logrank_p": km["logrank_p"], "risk_split": split,
                               "n_high_risk": int((groups == "high").sum()), "runtime": runtime.forwards_run(network)}
    if recipe_name == "seed":
        cut = float(package.metadata["output"].get("seed_cut_days", np.median(t)))
        labels = seed_labels(t, e, cut)
        correct = ((risk >= 0.5).astype(int) == labels).astype(float)
        acc, alo, ahi = bootstrap_ci(lambda v: float(np.mean(v)), correct, n_boot=n_boot)
        metrics.update(accuracy=acc, accuracy_ci_low=alo, accuracy_ci_high=ahi)
    if km_png is not None:
        plot_kaplan_meier(t, e, groups, km_png, time_label="time (days)",
                          title=f"Kaplan-Meier by predicted risk ({recipe_name}; C-index {c:.2f})")
    metrics["risk"] = [float(v) for v in risk]
    metrics["patients"] = ids
    return metrics


def risk_group(risk: float, package: models.ModelPackage) -> str:
    """``"high"`` when ``risk`` exceeds the package's training-median risk, else ``"low"``."""
    threshold = package.metadata["output"].get("risk_threshold")
    if threshold is None or not math.isfinite(float(threshold)):
        raise InputError(f"model {package.name!r} has no risk_threshold in its metadata")
    return "high" if risk > float(threshold) else "low"


# ---------------------------------------------------------------------------------------------- cross-validation
def cross_validate(studies: Sequence[LungStudy], out: str | Path, recipe_name: str = "seed", *, folds: int = 5,
                   epochs: int | None = None, max_minutes: float | None = None, batch_size: int | None = None,
                   size: int | None = None, seed: int = 0, device: str | None = None, force_cpu: bool = False,
                   n_boot: int = 1000) -> dict[str, Any]:
    """Patient-level ``folds``-fold cross-validation of a recipe (the seed recipe's "5-fold CV, accuracy").

    Fold ``k`` trains on the other folds (:func:`train_model`, which keeps a fifth of them for choosing the best
    epoch) into ``out/fold-k`` and is evaluated on fold ``k`` (:func:`evaluate_model`). Patients never cross
    folds (:func:`MedDLLib.evaluation.patient_splits`).

    Returns:
        flat metrics: ``cv_folds``, ``cv_accuracy`` (all out-of-fold predictions pooled, each against its fold's
        label cut) with a bootstrap CI over patients (``cv_accuracy_ci_low``/``_high``), ``cv_accuracy_mean`` and
        ``cv_accuracy_sd`` over folds, ``cv_c_index_mean`` over folds, and ``cv_fold_accuracy`` /
        ``cv_fold_c_index`` (lists); for the improved recipe no accuracy, only the C-index values.
    """
    from MedDLLib.evaluation import bootstrap_ci, concordance_index, patient_splits

    studies = list(studies)
    splits = patient_splits([s.patient_id for s in studies], folds, seed)
    correct: list[float] = []
    fold_acc: list[float] = []
    fold_c: list[float] = []
    per_time_budget = None if max_minutes is None else max_minutes / folds
    for k, (train_idx, test_idx) in enumerate(splits):
        package = Path(out) / f"fold-{k}"
        train_model([studies[i] for i in train_idx], package, recipe_name, epochs=epochs, max_minutes=per_time_budget,
                    batch_size=batch_size, size=size, seed=seed, device=device, force_cpu=force_cpu)
        test = [studies[i] for i in test_idx]
        network, pkg = models.load_task_model(package, TASK)
        spec = InputSpec.from_metadata(pkg.metadata["input"])
        risk = risk_scores(predict_inputs(network, np.stack([prepare_study(s, spec) for s in test])), recipe_name)
        try:
            fold_c.append(concordance_index(np.array([s.time_days for s in test]), risk,
                                            np.array([s.event for s in test])))
        except InputError:  # no comparable pair in this fold
            fold_c.append(float("nan"))
        if recipe_name == "seed":
            cut = float(pkg.metadata["output"]["seed_cut_days"])
            labels = seed_labels(np.array([s.time_days for s in test]), np.array([s.event for s in test]), cut)
            hits = ((risk >= 0.5).astype(int) == labels).astype(float)
            correct.extend(hits.tolist())
            fold_acc.append(float(hits.mean()))
    result: dict[str, Any] = {"cv_folds": folds, "cv_recipe": recipe_name, "cv_n_studies": len(studies),
                              "cv_fold_c_index": fold_c,
                              "cv_c_index_mean": float(np.nanmean(fold_c)) if np.isfinite(fold_c).any() else None}
    if recipe_name == "seed":
        acc, lo, hi = bootstrap_ci(lambda v: float(np.mean(v)), np.array(correct), n_boot=n_boot)
        result.update(cv_accuracy=acc, cv_accuracy_ci_low=lo, cv_accuracy_ci_high=hi,
                      cv_accuracy_mean=float(np.mean(fold_acc)), cv_accuracy_sd=float(np.std(fold_acc, ddof=1)),
                      cv_fold_accuracy=fold_acc)
    return result


def add_metrics(package_path: str | Path, flat: dict[str, Any]) -> Path:
    """Store cross-validation results (:func:`cross_validate`) in a package's ``metrics`` (the model card):
    ``cv_accuracy`` with its 95 % CI, ``cv_c_index_mean``, and the number of folds."""
    package = models.load_package(package_path)
    meta = dict(package.metadata)
    metrics = dict(meta.get("metrics") or {})
    if flat.get("cv_accuracy") is not None:
        metrics["cv_accuracy"] = {"value": flat["cv_accuracy"],
                                  "ci95": [flat["cv_accuracy_ci_low"], flat["cv_accuracy_ci_high"]],
                                  "folds": flat["cv_folds"]}
    if flat.get("cv_c_index_mean") is not None:
        metrics["cv_c_index_mean"] = {"value": flat["cv_c_index_mean"], "folds": flat["cv_folds"]}
    meta["metrics"] = metrics
    for key in ("format", "sha256", "libraries", "created"):
        meta.pop(key, None)
    return models.save_package(package_path, package.state_dict, meta)
