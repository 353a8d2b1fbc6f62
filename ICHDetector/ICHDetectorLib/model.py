"""ICH networks and the two training recipes, on :func:`MedDLLib.training.train`.

``seed`` reproduces the published recipe that did not learn: HU divided by the slice's maximum absolute
value, one channel, a small 2D CNN, **softmax over the 6 labels** with categorical cross-entropy against the
multi-hot label vector (a negative slice has an all-zero target and contributes no gradient), Adadelta
(lr 1.0), batch 80.

``improved``: 6 independent sigmoid outputs with ``BCEWithLogits`` weighted 2 for "any" (the RSNA metric's
weights), brain/subdural/bone windows as channels, 2.5D context (one neighbour on each side: 9 channels), a
MONAI 2D ResNet backbone (``monai.networks.nets.ResNet``, built by its mirror in ``MedDLLib.models.nets``; basic
blocks, widths 16-128: CPU-sized), AdamW with the learning rate annealed to 0 over the epochs (cosine), left-right
flip augmentation. Both pick the best epoch
on the validation studies' weighted log loss.

Probabilities: :func:`probabilities` turns the logits into per-label probabilities as each recipe defines them
(softmax for the seed, sigmoid for the improved one), so both are scored by the same metrics.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from MedDLLib import models
from MedDLLib.errors import InputError
from MedDLLib.evaluation import RSNA2019_WEIGHTS, auroc_with_ci, weighted_log_loss

from .dataset import LABELS, Study, hflip, load_sample, split_studies, training_items
from .options import THRESHOLD
from .preprocess import InputSpec

TASK = "ich"
VERSION = "1.0.0"


# ---------------------------------------------------------------------------------------------- networks
class SeedCNN(nn.Module):
    """The seed recipe's small 2D CNN: three conv-ReLU-maxpool blocks, global average pool, linear to 6."""

    def __init__(self, in_channels: int = 1, num_classes: int = 6, width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> logits ``(B, num_classes)``."""
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def ich_resnet2d(in_channels: int = 9, num_classes: int = 6, widths: Sequence[int] = (16, 32, 64, 128)) -> nn.Module:
    """MONAI 2D ResNet (basic blocks, one per stage, 3x3 stem without stride) sized for CPU training.

    Built by MedDL's pure-torch mirror of MONAI's ``ResNet`` (:mod:`MedDLLib.models.nets`: same modules and
    state-dict keys, no 2 s MONAI import at inference)."""
    from MedDLLib.models.nets import ResNet

    return ResNet(block="basic", layers=[1, 1, 1, 1], block_inplanes=list(widths), spatial_dims=2,
                  n_input_channels=in_channels, conv1_t_size=3, conv1_t_stride=1, num_classes=num_classes)


models.register_network("ich.seed_cnn", SeedCNN)
models.register_network("ich.resnet2d", ich_resnet2d)


# ---------------------------------------------------------------------------------------------- recipes
@dataclasses.dataclass(frozen=True)
class Recipe:
    """Everything that differs between the seed and improved recipes."""

    name: str
    spec: InputSpec
    network: str
    output: str  # "softmax" or "sigmoid"
    optimizer: str  # "adadelta" or "adam"
    lr: float
    batch_size: int
    epochs: int
    gradcam_layer: str
    augment: bool
    schedule: str = "constant"  # or "cosine": learning rate annealed to 0 over the epochs

    def network_args(self) -> dict[str, Any]:
        return {"in_channels": len(self.spec.channels), "num_classes": len(LABELS)}


def recipe(name: str, size: int = 64) -> Recipe:
    """The ``seed`` or ``improved`` recipe with network input ``size x size``."""
    if name == "seed":
        return Recipe("seed", InputSpec(mode="maxabs", context=0, size=size, fix_bad_intercept=False),
                      "ich.seed_cnn", "softmax", "adadelta", 1.0, 80, 25, "features.4", False)
    if name == "improved":
        return Recipe("improved", InputSpec(mode="windows", context=1, size=size), "ich.resnet2d", "sigmoid",
                      "adam", 1e-3, 32, 12, "layer3", True, "cosine")
    raise InputError(f"unknown recipe {name!r}; expected 'seed' or 'improved'")


class SoftmaxCrossEntropy(nn.Module):
    """Categorical cross-entropy of a softmax over the labels against the (multi-hot) label vector."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return -(target * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()


class WeightedBCE(nn.Module):
    """``BCEWithLogits`` per label, weighted (default: the RSNA weights, 'any' = 2) and normalised by the weights."""

    def __init__(self, weights: Sequence[float] = RSNA2019_WEIGHTS) -> None:
        super().__init__()
        self.register_buffer("weights", torch.tensor(list(weights), dtype=torch.float32))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
        return (loss * self.weights).sum(dim=1).mean() / self.weights.sum()


def loss_for(output: str) -> nn.Module:
    return SoftmaxCrossEntropy() if output == "softmax" else WeightedBCE()


def probabilities(logits: torch.Tensor | np.ndarray, output: str) -> np.ndarray:
    """Per-label probabilities ``(N, 6)`` from logits: softmax (seed) or sigmoid (improved)."""
    t = torch.as_tensor(np.asarray(logits, dtype=np.float32))
    p = torch.softmax(t, dim=1) if output == "softmax" else torch.sigmoid(t)
    return p.numpy().astype(np.float64)


# ---------------------------------------------------------------------------------------------- metrics
def slice_metrics(y_true: np.ndarray, y_prob: np.ndarray, groups: Sequence[Any] | None = None,
                  n_boot: int = 200, seed: int = 0) -> dict[str, float]:
    """Flat metrics of slice predictions: ``weighted_log_loss`` and ``auroc_<label>`` with CIs.

    CIs resample whole studies when ``groups`` (study id per slice) is given. A label with one class only in
    ``y_true`` gets NaN AUROC.
    """
    from MedDLLib.evaluation import bootstrap_ci

    y_true = np.asarray(y_true, dtype=int)
    y_prob = np.clip(np.asarray(y_prob, dtype=float), 0.0, 1.0)
    wll, lo, hi = bootstrap_ci(weighted_log_loss, y_true, y_prob, n_boot=n_boot, seed=seed, groups=groups)
    out = {"weighted_log_loss": wll, "weighted_log_loss_ci_low": lo, "weighted_log_loss_ci_high": hi}
    for j, label in enumerate(LABELS):
        if len(np.unique(y_true[:, j])) < 2:
            out[f"auroc_{label}"] = out[f"auroc_{label}_ci_low"] = out[f"auroc_{label}_ci_high"] = math.nan
            continue
        auc, lo, hi = auroc_with_ci(y_true[:, j], y_prob[:, j], n_boot=n_boot, seed=seed, groups=groups)
        out.update({f"auroc_{label}": auc, f"auroc_{label}_ci_low": lo, f"auroc_{label}_ci_high": hi})
    return out


def study_metrics(study_true: np.ndarray, study_prob: np.ndarray,
                  threshold: float = THRESHOLD.default) -> dict[str, float]:
    """Study-level 'any': sensitivity and specificity at ``threshold`` (study probability = max over slices)."""
    t = np.asarray(study_true, dtype=bool)
    p = np.asarray(study_prob, dtype=float) >= threshold
    sens = float((p & t).sum() / t.sum()) if t.any() else math.nan
    spec = float((~p & ~t).sum() / (~t).sum()) if (~t).any() else math.nan
    return {"study_threshold": threshold, "study_sensitivity_any": sens, "study_specificity_any": spec,
            "study_n_positive": int(t.sum()), "study_n_negative": int((~t).sum())}


def _validate_fn(output: str):
    from MedDLLib.training import predict_loader

    def validate(network: nn.Module, loader: Any, device: torch.device) -> dict[str, float]:
        logits, targets = predict_loader(network, loader, device)
        y_true = targets.numpy().astype(int)
        y_prob = np.clip(probabilities(logits, output), 1e-7, 1 - 1e-7)
        result = {"weighted_log_loss": weighted_log_loss(y_true, y_prob)}
        if len(np.unique(y_true[:, 0])) == 2:
            from sklearn.metrics import roc_auc_score

            result["auroc_any"] = float(roc_auc_score(y_true[:, 0], y_prob[:, 0]))
        return result

    return validate


# ---------------------------------------------------------------------------------------------- training
def package_metadata(r: Recipe, training_data: dict[str, Any]) -> dict[str, Any]:
    """The ``configs/metadata.json`` of a package of recipe ``r`` (``metrics`` empty; training fills them)."""
    return {"task": TASK, "version": VERSION, "recipe": r.name,
            "network": {"name": r.network, "args": r.network_args()}, "input": r.spec.to_metadata(),
            "output": {"labels": list(LABELS), "activation": r.output, "gradcam_layer": r.gradcam_layer},
            "training_data": dict(training_data), "metrics": {}}


def train_model(studies: Sequence[Study], out: str | Path, recipe_name: str = "improved", *, epochs: int | None = None,
                max_minutes: float | None = None, batch_size: int | None = None, size: int = 64, seed: int = 0,
                device: str | None = None, force_cpu: bool = False, num_workers: int = 0,
                description: str = "", kind: str = "synthetic") -> Any:
    """Train one recipe on ``studies`` (split by patient into training/validation) and write the package ``out``.

    Returns:
        :class:`MedDLLib.training.TrainResult`.
    """
    from MedDLLib.datasets import FileDataset
    from MedDLLib.training import TrainConfig, train

    r = recipe(recipe_name, size)
    train_studies, val_studies = split_studies(list(studies), 0.2, seed)
    train_items = training_items(train_studies, r.spec.context)
    val_items = training_items(val_studies, r.spec.context)
    if not train_items or not val_items:
        raise InputError("not enough labelled slices to train (need labelled slices in training and validation)")
    load = functools.partial(load_sample, spec=r.spec)
    train_ds = FileDataset(train_items, load, transform=hflip if r.augment else None)
    val_ds = FileDataset(val_items, load)
    metadata = package_metadata(r, {"kind": kind, "n_studies": len(train_studies),
                                    "description": description or f"{len(train_studies)} training and "
                                                                  f"{len(val_studies)} validation studies "
                                                                  "(RSNA 2019 layout)"})
    torch.manual_seed(seed)
    network = models.build_network(metadata)
    if r.optimizer == "adadelta":
        optimizer_factory = functools.partial(torch.optim.Adadelta, lr=r.lr)
    else:
        optimizer_factory = functools.partial(torch.optim.AdamW, lr=r.lr, weight_decay=1e-4)
    config = TrainConfig(out=Path(out), epochs=epochs or r.epochs, max_minutes=max_minutes,
                         batch_size=batch_size or r.batch_size, lr=r.lr, seed=seed, device=device,
                         force_cpu=force_cpu, num_workers=num_workers, metric="weighted_log_loss",
                         metric_mode="min", drop_last=len(train_items) > (batch_size or r.batch_size))
    scheduler_factory = None
    if r.schedule == "cosine":
        scheduler_factory = functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=config.epochs)
    return train(network, train_ds, val_ds, loss_for(r.output), config, metadata=metadata,
                 optimizer_factory=optimizer_factory, scheduler_factory=scheduler_factory,
                 validate_fn=_validate_fn(r.output))


# ---------------------------------------------------------------------------------------------- prediction
def load_model(model: str | Path | models.ModelPackage, device: Any = "cpu") -> tuple[nn.Module, models.ModelPackage]:
    """``(network in eval mode, package)`` of an ICH model package (folder, cached name or loaded package)."""
    from MedDLLib import runtime

    network, package = models.load_task_model(model, TASK, device)
    if list(package.labels) != list(LABELS):
        raise InputError(f"model {package.name!r} outputs {package.labels}, expected {list(LABELS)}")
    runtime.attach(network, package)  # predict_inputs(network, ...) then finds the package's runtime export
    return network, package


def predict_inputs(network: nn.Module, inputs: np.ndarray, output: str, batch_size: int = 64,
                   device: Any = "cpu", package: models.ModelPackage | None = None) -> np.ndarray:
    """Probabilities ``(N, 6)`` for network inputs ``(N, C, S, S)``.

    The forward runs on the runtime :func:`MedDLLib.runtime.runner_for` chooses for ``network`` and ``package``
    (ONNX Runtime/OpenVINO where they agree with torch fp32 within 1e-3 in probability; torch otherwise).
    """
    from MedDLLib import runtime

    run = runtime.runner_for(network, package, agree=runtime.probabilities_agree(output))
    logits = [run(inputs[i:i + batch_size]) for i in range(0, len(inputs), batch_size)]
    return probabilities(np.concatenate(logits), output)


def predict_studies(network: nn.Module, package: models.ModelPackage, studies: Sequence[Study],
                    device: Any = "cpu") -> list[np.ndarray]:
    """Slice probabilities ``(n_slices, 6)`` of each study, reading its files one study at a time."""
    from .preprocess import read_slice_hu, volume_input

    from MedDLLib.geometry import Volume

    spec = InputSpec.from_metadata(package.metadata["input"])
    output = package.metadata["output"].get("activation", "sigmoid")
    result = []
    for study in studies:
        hu = np.stack([read_slice_hu(p, fix=spec.fix_bad_intercept) for p in study.paths])
        inputs, _ = volume_input(Volume(hu), spec)
        result.append(predict_inputs(network, inputs, output, device=device, package=package))
    return result


def evaluate_model(model: str | Path | models.ModelPackage, studies: Sequence[Study], *,
                   threshold: float = THRESHOLD.default,
                   n_boot: int = 200, device: Any = "cpu", figures_dir: str | Path | None = None) -> dict[str, Any]:
    """Flat metrics of a model on labelled studies (slice-level, CIs by study; study-level 'any').

    With ``figures_dir``, also the slice-level 'any' ROC curve with its CI band (whole studies resampled) and
    reliability diagram there (``any_roc.png``, ``any_reliability.png``; their paths, ``any_ece`` and
    ``any_brier`` in the metrics: :func:`MedDLLib.evaluation.classifier_figures`)."""
    network, package = load_model(model, device)
    probs = predict_studies(network, package, studies, device)
    y_true, y_prob, groups, s_true, s_prob = [], [], [], [], []
    for study, p in zip(studies, probs):
        keep = study.labelled
        y_true.append(study.labels[keep])
        y_prob.append(p[keep])
        groups += [study.study_uid] * int(keep.sum())
        s_true.append(study.any_label)
        s_prob.append(float(p[:, 0].max()))
    from MedDLLib import runtime

    metrics: dict[str, Any] = {"recipe": package.metadata.get("recipe"), "n_studies": len(studies),
                               "n_slices": int(sum(len(g) for g in y_true)), "runtime": runtime.forwards_run(network)}
    metrics.update(slice_metrics(np.concatenate(y_true), np.concatenate(y_prob), groups, n_boot=n_boot))
    metrics.update(study_metrics(np.array(s_true), np.array(s_prob), threshold))
    if figures_dir is not None:
        from MedDLLib.evaluation import classifier_figures

        any_true, any_prob = np.concatenate(y_true)[:, 0], np.clip(np.concatenate(y_prob)[:, 0], 0.0, 1.0)
        metrics.update(classifier_figures(any_true, any_prob, figures_dir, what="any haemorrhage, per slice",
                                          prefix="any_", n_boot=n_boot, groups=groups))
    return metrics


def untrained_package(folder: Path, size: int, seed: int = 0) -> Path:
    """An improved-recipe ICH package with seeded random weights at ``folder/bench-model`` (self-tests,
    benchmarks and tests: the outputs' form, not their values)."""
    meta = package_metadata(recipe("improved", size),
                            {"kind": "synthetic", "n_studies": 0, "description": "untrained (tests only)"})
    torch.manual_seed(seed)
    network = models.build_network(meta)
    return models.save_package(folder / "bench-model", network, meta)
