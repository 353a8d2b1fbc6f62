"""MGMT networks and the two recipes, on :func:`MedDLLib.training.train`, with honest evaluation.

``seed`` (the RSNA-MICCAI 2021 1st place recipe): T1wCE only, slices in natural file-name order and not
reoriented (the published bug), VOI LUT, 256 x 256, min-max per slice, 64 slices around the largest-brain-area
slice, MONAI ``resnet10(spatial_dims=3, n_input_channels=1, num_classes=1)`` with its default
``conv1_t_stride=1``, ``BCEWithLogits``, Adam 1e-4, ``MultiStepLR(milestones=[10], gamma=0.5)``, 15 epochs,
5 folds.

``improved``: the same ResNet-10 body with ``conv1_t_stride=2`` (about 8x fewer activations: CPU inference in
about a second instead of 17 s at 256 x 256 x 64) and a local evidence head instead of average pooling
(:class:`EvidenceResNet10`: its Grad-CAM lies on the lesion, not on scalp and air), slices sorted by position
and reoriented to axial LPS,
20 epochs with the learning rate halved once at 80 % of the run (the evidence network starts learning only
around epoch 10; halving the rate there left it under-trained, its heatmap spread over the lesion's surroundings:
0.41 of the mass on the lesion instead of 0.57 for the same data and seed),
optional several sequences as channels, left-right flip augmentation, and repeated cross-validation over seeds
(:func:`cross_validate`) reporting the AUROC mean and standard deviation over seeds and a bootstrap CI over
cases of the pooled out-of-fold predictions.

Both pick the best epoch on a validation split carved out of the training cases (never the evaluated ones).
Studies are preprocessed once into a cache of ``.npy`` arrays (:func:`cache_inputs`), which every fold and
seed reuse; training streams them from disk.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from MedDLLib import models
from MedDLLib.errors import InputError

from .card import CAVEAT, model_card
from .dataset import Case, read_case
from .evidence import EVIDENCE_NETWORK, SHARPNESS
from .preprocess import InputSpec, prepare

TASK = "glioma"
VERSION = "1.1.0"
LABELS = ["MGMT_methylated"]
#: The seed recipe's network (MONAI's, unchanged) and the improved recipe's (:class:`EvidenceResNet10`).
NETWORK = "monai.networks.nets.resnet10"


# ---------------------------------------------------------------------------------------------- networks
class EvidenceResNet10(nn.Module):
    """MONAI ``resnet10`` with a local evidence head instead of global average pooling.

    The body is MONAI's (``conv1`` .. ``layer4``, same blocks and widths, ``pretrained=False``); the first blocks
    of the deepest layers are given stride 1 so the body keeps ``output_stride`` (4, 8, 16 or 32; with
    ``conv1_t_stride=2`` the stem alone divides by 4). A 1x1x1 convolution, ``evidence``, scores every position
    of ``layer4``'s output (the evidence map, one logit per cell), and log-sum-exp pooling (a smooth maximum,
    ``sharpness`` r) turns the map into the study's logit: ``z = log(sum(exp(r * m))) / r``.

    Why: a whole-volume network with average pooling judges the lesion against its surroundings, and its Grad-CAM
    spreads over scalp, skull and air (measured; see ``Testing/test_glioma_model.py``). With a smooth-maximum
    pool a study is methylated only where some cell holds evidence, and an unmethylated study must have none
    anywhere, so the evidence lies where the signal is. Grad-CAM at ``evidence`` (one channel, channel weight =
    its mean gradient > 0) is exactly the positive part of the evidence map, upsampled. Log-sum-exp pooling for
    weakly supervised localisation: Pinheiro & Collobert, CVPR 2015; Wang et al., ChestX-ray8, CVPR 2017.

    Shapes: input ``(B, C, D, H, W)``; :meth:`evidence_map` ``(B, 1, D/s, H/s, W/s)`` (s = output stride, rounded
    up); output logits ``(B, 1)``.
    """

    def __init__(self, n_input_channels: int = 1, conv1_t_stride: int = 2, output_stride: int = 16,
                 widen_factor: float = 1.0, sharpness: float = SHARPNESS) -> None:
        super().__init__()
        from MedDLLib.models.nets import resnet10  # MONAI's resnet10, mirrored in pure torch (same state dict)

        if conv1_t_stride not in (1, 2):
            raise ValueError(f"conv1_t_stride must be 1 or 2, got {conv1_t_stride}")
        stem = 2 * int(conv1_t_stride)  # conv1, then the max pool (stride 2)
        strided = {stem * 2 ** n: n for n in range(4)}  # output stride -> how many of layer2..4 keep stride 2
        if output_stride not in strided:
            raise ValueError(f"output_stride must be one of {sorted(strided)} with conv1_t_stride "
                             f"{conv1_t_stride}, got {output_stride}")
        if not sharpness > 0:
            raise ValueError(f"sharpness must be > 0, got {sharpness}")
        body = resnet10(spatial_dims=3, n_input_channels=n_input_channels, conv1_t_stride=conv1_t_stride,
                        widen_factor=widen_factor, feed_forward=False)
        for name in ("layer2", "layer3", "layer4")[strided[output_stride]:]:
            block = getattr(body, name)[0]
            block.conv1.stride = (1, 1, 1)
            block.downsample[0].stride = (1, 1, 1)
        self.conv1, self.bn1, self.act, self.maxpool = body.conv1, body.bn1, body.act, body.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = body.layer1, body.layer2, body.layer3, body.layer4
        self.evidence = nn.Conv3d(self.layer4[-1].conv2.out_channels, 1, kernel_size=1)
        self.sharpness = float(sharpness)

    def evidence_map(self, x: torch.Tensor) -> torch.Tensor:
        """Logit of each cell ``(B, 1, d, h, w)`` for inputs ``(B, C, D, H, W)``."""
        x = self.maxpool(self.act(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.evidence(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.evidence_map(x).flatten(1) * self.sharpness
        return (torch.logsumexp(m, dim=1, keepdim=True) / self.sharpness)


models.register_network(EVIDENCE_NETWORK, EvidenceResNet10)


def evidence_stride(size: int) -> int:
    """Output stride of the improved network at input ``size`` pixels: the largest of 4, 8, 16 leaving the
    evidence map at least 12 cells across (256 px: 16, cells of 16 px; 48 px: 4)."""
    return max([4] + [s for s in (8, 16) if size // s >= 12])


# ---------------------------------------------------------------------------------------------- recipes
@dataclasses.dataclass(frozen=True)
class Recipe:
    """Everything that differs between the seed and improved recipes."""

    name: str
    spec: InputSpec
    conv1_stride: int
    epochs: int
    lr: float
    batch_size: int
    milestones: tuple[int, ...]
    gamma: float
    folds: int
    cv_seeds: tuple[int, ...]
    augment: bool
    gradcam_layer: str
    widen_factor: float = 1.0
    network: str = NETWORK
    output_stride: int | None = None  # EvidenceResNet10 only
    #: When set, the learning rate drops once, at this fraction of the run (whatever ``--epochs`` is), instead of
    #: at the fixed ``milestones``.
    milestone_fraction: float | None = None

    def lr_milestones(self, epochs: int) -> list[int]:
        """Epochs after which ``MultiStepLR`` multiplies the learning rate by ``gamma`` in a run of ``epochs``."""
        if self.milestone_fraction is None:
            return list(self.milestones)
        return [max(1, round(self.milestone_fraction * epochs))]

    def network_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"n_input_channels": len(self.spec.channels), "conv1_t_stride": self.conv1_stride}
        if self.network == NETWORK:
            args.update(spatial_dims=3, num_classes=1)
        else:
            args["output_stride"] = self.output_stride
        if self.widen_factor != 1.0:
            args["widen_factor"] = self.widen_factor
        return args


def recipe(name: str, *, size: int = 256, depth: int = 64, sequences: Sequence[str] | None = None,
           widen_factor: float = 1.0) -> Recipe:
    """The ``seed`` or ``improved`` recipe at network input ``depth x size x size``.

    Args:
        sequences: input sequences (default: T1wCE; the seed recipe always uses one sequence).
        widen_factor: channel width multiplier of the resnet10 (1 = MONAI's; smaller for quick tests).
    """
    if name == "seed":
        seqs = tuple(sequences or ("T1wCE",))
        if len(seqs) != 1:
            raise InputError(f"the seed recipe uses one sequence; got {seqs}")
        spec = InputSpec(seqs, size, depth, reorient=False, slice_order="filename")
        return Recipe("seed", spec, 1, 15, 1e-4, 4, (10,), 0.5, 5, (0,), False, "layer2", widen_factor)
    if name == "improved":
        spec = InputSpec(tuple(sequences or ("T1wCE",)), size, depth, reorient=True, slice_order="position")
        return Recipe("improved", spec, 2, 20, 1e-4, 4, (), 0.5, 5, (0, 1, 2), True, "evidence", widen_factor,
                      EVIDENCE_NETWORK, evidence_stride(size), milestone_fraction=0.8)
    raise InputError(f"unknown recipe {name!r}; expected 'seed' or 'improved'")


def package_metadata(r: Recipe, training_data: dict[str, Any], metrics: dict[str, Any] | None = None
                     ) -> dict[str, Any]:
    """The ``configs/metadata.json`` of a package of recipe ``r`` (the caveat included)."""
    return {"task": TASK, "version": VERSION, "recipe": r.name, "network": {"name": r.network, "args": r.network_args()},
            "input": r.spec.to_metadata(),
            "output": {"labels": LABELS, "activation": "sigmoid", "gradcam_layer": r.gradcam_layer, "caveat": CAVEAT},
            "training_data": dict(training_data), "metrics": dict(metrics or {})}


def build(r: Recipe) -> nn.Module:
    """The untrained network of a recipe (MONAI resnet10 or :class:`EvidenceResNet10`, pretrained=False)."""
    return models.build_network({"task": TASK, "network": {"name": r.network, "args": r.network_args()}})


# ---------------------------------------------------------------------------------------------- data
def _cache_key(case: Case, spec: InputSpec) -> str:
    text = json.dumps({"case": case.case_id, "folders": {k: str(v) for k, v in sorted(case.folders.items())},
                       "spec": spec.to_metadata()}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def cache_inputs(cases: Sequence[Case], spec: InputSpec, cache_dir: str | Path) -> list[Path]:
    """Preprocess every case once (:func:`~GliomaClassifierLib.preprocess.prepare`) into ``cache_dir/<key>.npy``.

    Arrays are float16 ``(C, depth, size, size)``; the key covers the case's folders and the spec, so a cache
    is reused across folds, seeds and runs and never mixes specs. Returns the paths in ``cases`` order.
    """
    from MedDLLib.io import atomic_path

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for case in cases:
        path = cache_dir / f"{case.case_id}-{_cache_key(case, spec)}.npy"
        if not path.is_file():
            array = prepare(read_case(case, spec.sequences), spec).array.astype(np.float16)
            with atomic_path(path, ".npy") as tmp, open(tmp, "wb") as f:
                np.save(f, array)
        paths.append(path)
    return paths


def load_item(item: tuple[str, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input (C, D, H, W) float32, target (1,) float32)`` of a cached case."""
    path, label = item
    return torch.from_numpy(np.load(path).astype(np.float32)), torch.tensor([float(label)])


def flip_lr(sample: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Augmentation: random left-right flip (the last axis is L-R after reorientation to LPS)."""
    x, y = sample
    if torch.rand(()) < 0.5:
        x = torch.flip(x, dims=(-1,))
    return x, y


def _validate(network: nn.Module, loader: Any, device: torch.device) -> dict[str, float]:
    from MedDLLib.training import predict_loader

    logits, targets = predict_loader(network, loader, device)
    loss = float(nn.functional.binary_cross_entropy_with_logits(logits, targets.float()))
    out = {"loss": loss}
    y = targets.numpy().ravel().astype(int)
    if len(np.unique(y)) == 2:
        from sklearn.metrics import roc_auc_score

        out["auroc"] = float(roc_auc_score(y, logits.numpy().ravel()))
    return out


# ---------------------------------------------------------------------------------------------- training
def train_model(cases: Sequence[Case], out: str | Path, recipe_name: str = "improved", *,
                epochs: int | None = None, max_minutes: float | None = None, batch_size: int | None = None,
                lr: float | None = None, size: int = 256, depth: int = 64, sequences: Sequence[str] | None = None,
                widen_factor: float = 1.0, seed: int = 0, device: str | None = None, force_cpu: bool = False,
                cache_dir: str | Path | None = None, val_fraction: float = 0.2, kind: str = "synthetic",
                description: str = "", metrics: dict[str, Any] | None = None, progress: bool | None = None) -> Any:
    """Train one recipe on labelled ``cases`` (a validation split of them picks the best epoch); write ``out``.

    Returns:
        :class:`MedDLLib.training.TrainResult`.
    """
    from MedDLLib.datasets import FileDataset
    from MedDLLib.training import TrainConfig, train

    r = recipe(recipe_name, size=size, depth=depth, sequences=sequences, widen_factor=widen_factor)
    cases = [c for c in cases if c.label is not None]
    if len(cases) < 4:
        raise InputError(f"need at least 4 labelled cases to train, got {len(cases)}")
    train_idx, val_idx = _stratified_split([c.label for c in cases], val_fraction, seed)
    with _cache(cache_dir) as cdir:
        paths = cache_inputs(cases, r.spec, cdir)
        items = [(str(p), int(c.label)) for p, c in zip(paths, cases)]
        train_ds = FileDataset([items[i] for i in train_idx], load_item, transform=flip_lr if r.augment else None)
        val_ds = FileDataset([items[i] for i in val_idx], load_item)
        torch.manual_seed(seed)
        network = build(r)
        n_pos = sum(int(cases[i].label) for i in train_idx)
        metadata = package_metadata(r, {"kind": kind, "n_studies": len(train_idx),
                                        "description": description or f"{len(train_idx)} training ({n_pos} "
                                                                      f"methylated) and {len(val_idx)} validation "
                                                                      "cases (RSNA-MICCAI layout)"}, metrics)
        bs = batch_size or r.batch_size
        n_epochs = epochs or r.epochs
        config = TrainConfig(out=Path(out), epochs=n_epochs, max_minutes=max_minutes, batch_size=bs,
                             lr=lr or r.lr, seed=seed, device=device, force_cpu=force_cpu, metric="loss",
                             metric_mode="min", drop_last=len(train_idx) > bs, progress=progress)
        milestones, gamma = r.lr_milestones(n_epochs), r.gamma
        return train(network, train_ds, val_ds, nn.BCEWithLogitsLoss(), config, metadata=metadata,
                     optimizer_factory=functools.partial(torch.optim.Adam, lr=lr or r.lr),
                     scheduler_factory=lambda opt: torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma),
                     validate_fn=_validate)


def _stratified_split(labels: Sequence[int], val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Training/validation indices with both classes in validation where possible (one row per case)."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    y = np.asarray(labels)
    n_val = max(2, int(round(val_fraction * len(labels))))
    stratify = y if min(np.bincount(y, minlength=2)) >= 2 else None
    tr, va = train_test_split(index, test_size=n_val, random_state=seed, stratify=stratify)
    return np.sort(tr), np.sort(va)


class _cache:
    """``cache_dir`` as given, or a temporary folder removed afterwards."""

    def __init__(self, folder: str | Path | None) -> None:
        self.folder, self.tmp = folder, None

    def __enter__(self) -> Path:
        if self.folder is not None:
            return Path(self.folder)
        self.tmp = tempfile.mkdtemp(prefix="meddl-glioma-cache-")
        return Path(self.tmp)

    def __exit__(self, *exc: Any) -> None:
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- prediction
def predict_arrays(network: nn.Module, arrays: Sequence[np.ndarray] | np.ndarray, device: Any = "cpu",
                   batch_size: int = 1, package: models.ModelPackage | None = None) -> np.ndarray:
    """Probabilities ``(N,)`` of methylation for inputs ``(N, C, D, H, W)`` (or a list of ``(C, D, H, W)``).

    The forward runs on the runtime :func:`MedDLLib.runtime.runner_for` chooses for ``network`` and ``package``
    (probabilities within 1e-3 of torch fp32; torch when no package is known or no runtime agrees).
    """
    from MedDLLib import runtime

    run = runtime.runner_for(network, package, agree=runtime.probabilities_agree("sigmoid"))
    logits = [run(np.stack([np.asarray(a, dtype=np.float32) for a in arrays[i:i + batch_size]]))
              for i in range(0, len(arrays), batch_size)]
    return torch.sigmoid(torch.from_numpy(np.concatenate(logits))).numpy().ravel().astype(np.float64)


def predict_cases(model: str | Path | models.ModelPackage, cases: Sequence[Case], *, device: Any = "cpu",
                  cache_dir: str | Path | None = None) -> np.ndarray:
    """Probabilities ``(N,)`` of the cases, preprocessed as the model's input spec says."""
    network, package = models.load_task_model(model, TASK, device)
    return _predict_loaded(network, package, cases, device, cache_dir)


def _predict_loaded(network: nn.Module, package: models.ModelPackage, cases: Sequence[Case], device: Any,
                    cache_dir: str | Path | None) -> np.ndarray:
    """:func:`predict_cases` with the network built and its package loaded."""
    spec = InputSpec.from_metadata(package.metadata["input"])
    with _cache(cache_dir) as cdir:
        paths = cache_inputs(cases, spec, cdir)
        out = []
        for i in range(0, len(paths), 4):  # bounded memory: a few cases at a time
            out.append(predict_arrays(network, [np.load(p) for p in paths[i:i + 4]], device,
                                      package=package))
    return np.concatenate(out)


def auroc_metrics(y_true: Sequence[int], y_prob: Sequence[float], groups: Sequence[Any] | None = None,
                  n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """Flat ``auroc``, ``auroc_ci_low``, ``auroc_ci_high`` (percentile bootstrap over cases), plus counts.

    ``groups`` (case id per row) makes the bootstrap resample whole cases (rows of one case from several CV
    seeds stay together).
    """
    from MedDLLib.evaluation import auroc_with_ci

    y_true = np.asarray(y_true, dtype=int)
    y_prob = np.asarray(y_prob, dtype=float)
    auc, lo, hi = auroc_with_ci(y_true, y_prob, n_boot=n_boot, seed=seed, groups=groups)
    return {"auroc": auc, "auroc_ci_low": lo, "auroc_ci_high": hi,
            "accuracy_at_0_5": float(np.mean((y_prob >= 0.5) == (y_true == 1))),
            "brier": float(np.mean((y_prob - y_true) ** 2)),
            "n_cases": int(len(np.unique(groups)) if groups is not None else len(y_true)),
            "n_methylated": int(y_true.sum()) if groups is None else int(
                sum(dict(zip(groups, y_true)).values()))}


def evaluate_model(model: str | Path | models.ModelPackage, cases: Sequence[Case], *, n_boot: int = 1000,
                   device: Any = "cpu", cache_dir: str | Path | None = None, seed: int = 0,
                   figures_dir: str | Path | None = None) -> dict[str, Any]:
    """Flat metrics of a model on labelled held-out cases: ``auroc`` with its 95 % bootstrap CI, and more.

    With ``figures_dir``, also the ROC curve with its CI band and the reliability diagram there (``roc.png``,
    ``reliability.png``; their paths, ``ece`` and ``brier`` in the metrics: :func:`MedDLLib.evaluation.
    classifier_figures`)."""
    cases = [c for c in cases if c.label is not None]
    if not cases:
        raise InputError("no labelled case to evaluate")
    from MedDLLib import runtime

    network, package = models.load_task_model(model, TASK, device)
    probs = _predict_loaded(network, package, cases, device, cache_dir)
    labels = [int(c.label) for c in cases]
    out: dict[str, Any] = {"recipe": package.metadata.get("recipe"), "model": package.name,
                           "runtime": runtime.forwards_run(network)}
    out.update(auroc_metrics(labels, probs, n_boot=n_boot, seed=seed))
    out["ci_contains_chance"] = bool(out["auroc_ci_low"] <= 0.5 <= out["auroc_ci_high"])
    if figures_dir is not None:
        from MedDLLib.evaluation import classifier_figures

        out.update(classifier_figures(labels, probs, figures_dir, what="MGMT methylated, per study", n_boot=n_boot,
                                      seed=seed))
    out["model_card"] = model_card(package.metadata)
    return out


# ---------------------------------------------------------------------------------------------- cross-validation
def cross_validate(cases: Sequence[Case], workdir: str | Path, recipe_name: str = "improved", *,
                   folds: int | None = None, seeds: Sequence[int] | None = None, n_boot: int = 1000,
                   shuffle_labels: bool = False, **train_args: Any) -> dict[str, Any]:
    """Repeated, stratified k-fold cross-validation over seeds; honest AUROC with spread and CI.

    For each seed the cases are split into ``folds`` stratified folds; a model is trained on the other folds
    (:func:`train_model`, its own validation split inside them) and predicts the held-out fold. Reported:
    ``auroc_mean`` and ``auroc_sd`` over seeds (AUROC of each seed's out-of-fold predictions), ``auroc`` of all
    out-of-fold predictions pooled over seeds with ``auroc_ci_low``/``auroc_ci_high`` from a bootstrap that
    resamples cases (all predictions of a case together), and ``auroc_per_seed``.

    Args:
        shuffle_labels: permute the labels first (a negative control: the CI should contain 0.5).
        train_args: passed to :func:`train_model` (epochs, size, depth, sequences, widen_factor, ...).
    """
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    r = recipe(recipe_name, size=train_args.get("size", 256), depth=train_args.get("depth", 64),
               sequences=train_args.get("sequences"))
    folds = int(folds or r.folds)
    seeds = tuple(seeds if seeds is not None else r.cv_seeds)
    cases = [c for c in cases if c.label is not None]
    labels = np.array([int(c.label) for c in cases])
    if shuffle_labels:
        labels = np.random.default_rng(12345).permutation(labels)
        cases = [dataclasses.replace(c, label=int(v)) for c, v in zip(cases, labels)]
    if min(np.bincount(labels, minlength=2)) < folds:
        raise InputError(f"{folds}-fold CV needs at least {folds} cases of each class; "
                         f"got {np.bincount(labels, minlength=2).tolist()}")
    workdir = Path(workdir)
    train_args.setdefault("cache_dir", workdir / "cache")
    rows_true, rows_prob, rows_case, per_seed = [], [], [], []
    for s in seeds:
        oof = np.full(len(cases), np.nan)
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=s)
        for f, (tr, te) in enumerate(splitter.split(np.zeros(len(cases)), labels)):
            out = workdir / f"seed{s}-fold{f}"
            train_model([cases[i] for i in tr], out, recipe_name, seed=s, **train_args)
            oof[te] = predict_cases(out, [cases[i] for i in te], cache_dir=train_args["cache_dir"])
        per_seed.append(float(roc_auc_score(labels, oof)))
        rows_true += labels.tolist()
        rows_prob += oof.tolist()
        rows_case += [c.case_id for c in cases]
    metrics: dict[str, Any] = {"recipe": recipe_name, "folds": folds, "seeds": list(seeds),
                               "shuffled_labels": shuffle_labels}
    metrics.update(auroc_metrics(rows_true, rows_prob, groups=rows_case, n_boot=n_boot))
    metrics.update(auroc_mean=float(np.mean(per_seed)), auroc_sd=float(np.std(per_seed, ddof=1)) if len(per_seed) > 1
                   else 0.0, auroc_per_seed=per_seed)
    metrics["ci_contains_chance"] = bool(metrics["auroc_ci_low"] <= 0.5 <= metrics["auroc_ci_high"])
    return metrics


def untrained_package(out: str | Path, recipe_name: str = "improved", *, size: int = 32, depth: int = 16,
                      sequences: Sequence[str] | None = None, widen_factor: float = 0.25, seed: int = 0) -> Path:
    """An untrained model package of a recipe (self-tests and benchmarks: outputs' form, not their values)."""
    r = recipe(recipe_name, size=size, depth=depth, sequences=sequences, widen_factor=widen_factor)
    torch.manual_seed(seed)
    meta = package_metadata(r, {"kind": "synthetic", "n_studies": 0, "description": "untrained (tests only)"})
    return models.save_package(out, build(r), meta)
