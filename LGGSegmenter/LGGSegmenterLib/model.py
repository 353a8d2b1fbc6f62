"""Networks, the seed/improved recipes, training, slice-by-slice inference and evaluation of LGG segmentation.

Networks (MONAI, 2D, one sigmoid output "tumour"): ``unet`` = ``BasicUNet``, ``unetpp`` = ``BasicUNetPlusPlus``
(registered here as ``LGGSegmenter.BasicUNetPlusPlus`` so that it returns one tensor, not a list), ``flexunet`` =
``FlexibleUNet`` with an EfficientNet-B0 encoder, always ``pretrained=False`` (nothing is downloaded).

Recipes (:data:`RECIPES`):

* ``seed``: the published Kaggle setup: whole slice / 255, Dice loss, **slice-level** train/validation split
  (slices of one patient on both sides: leakage), model selected on per-slice Dice over all slices (empty/empty
  counted as 1): its validation figure is inflated.
* ``improved`` (Buda et al. 2019): **patient-level** split, brain crop, p10-p99 normalisation, tumour slices
  oversampled to half of the draws, Dice+CE loss, largest connected component kept, model selected on
  per-patient 3D Dice.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from MedDLLib.errors import Cancelled, InputError, ModelError
from MedDLLib.geometry import Geometry

from . import dataset, preprocess

TASK = "lgg"
VERSION = "1.0.0"
LABELS = ["tumour"]
UNETPP_NAME = "LGGSegmenter.BasicUNetPlusPlus"
NETWORKS = {"unet": "monai.networks.nets.BasicUNet", "unetpp": UNETPP_NAME,
            "flexunet": "monai.networks.nets.FlexibleUNet"}
DEFAULT_NETWORK = "unet"
DEFAULT_WIDTH = 16


@dataclasses.dataclass(frozen=True)
class Recipe:
    """What differs between the seed and the improved recipe."""

    name: str
    split: str  # "slice" (leaky) or "patient"
    tumour_fraction: float | None  # share of tumour slices among the draws (None: no oversampling)
    loss: str  # "dice" or "dicece"
    largest_component: bool
    epochs: int
    lr: float
    batch_size: int


RECIPES = {
    "seed": Recipe("seed", "slice", None, "dice", False, 40, 1e-3, 16),
    "improved": Recipe("improved", "patient", 0.5, "dicece", True, 40, 2e-3, 16),
}


# ------------------------------------------------------------------------------------------------ networks
def _unetpp_factory(**args: Any) -> Any:
    from monai.networks.nets import BasicUNetPlusPlus

    class SingleOutputUNetPlusPlus(BasicUNetPlusPlus):
        """``BasicUNetPlusPlus`` returning its final output tensor instead of a one-element list."""

        def forward(self, x):  # type: ignore[override]
            return super().forward(x)[0]

    return SingleOutputUNetPlusPlus(**args)


def register_networks() -> None:
    """Register :data:`UNETPP_NAME` with :func:`MedDLLib.models.register_network` (idempotent)."""
    from MedDLLib.models import register_network

    register_network(UNETPP_NAME, _unetpp_factory)


register_networks()


def network_spec(kind: str, in_channels: int, width: int = DEFAULT_WIDTH) -> dict[str, Any]:
    """Metadata ``network`` entry ``{"name", "args"}`` of a 2D network with one output channel.

    Args:
        kind: ``unet``, ``unetpp`` or ``flexunet``.
        in_channels: 3 (pre/FLAIR/post) or 1 (FLAIR).
        width: channels of the first level (U-Net levels: w, w, 2w, 4w, 8w, w).
    """
    if kind not in NETWORKS:
        raise InputError(f"unknown network {kind!r}; expected one of {sorted(NETWORKS)}")
    if width < 4:
        raise InputError(f"network width must be >= 4, got {width}")
    if kind == "flexunet":
        args = {"in_channels": in_channels, "out_channels": 1, "backbone": "efficientnet-b0", "pretrained": False,
                "spatial_dims": 2, "decoder_channels": [16 * width, 8 * width, 4 * width, 2 * width, width]}
    else:
        args = {"spatial_dims": 2, "in_channels": in_channels, "out_channels": 1,
                "features": [width, width, 2 * width, 4 * width, 8 * width, width]}
    return {"name": NETWORKS[kind], "args": args}


def make_loss(recipe: Recipe) -> Any:
    """Dice (seed) or Dice + cross-entropy (improved) on logits ``(B, 1, S, S)`` vs targets ``(B, 1, S, S)``."""
    from monai.losses import DiceCELoss, DiceLoss

    if recipe.loss == "dice":
        return DiceLoss(sigmoid=True)
    return DiceCELoss(sigmoid=True)


# ------------------------------------------------------------------------------------------------ inference
#: Slices per forward at inference. On 2 CPU cores OpenVINO ran the improved U-Net (width 16, 256 px) at 8.7 ms a
#: slice in batches of 4, 9.3 in batches of 16; a cold 88-slice study took the same time and 200 MiB less peak
#: memory (532 against 733 MiB) than with batches of 16 (farm-bench, 7 pairs each).
INFERENCE_BATCH = 4


def predict_probabilities(network: Any, x: np.ndarray, device: Any = "cpu", batch_size: int = INFERENCE_BATCH,
                          progress: Callable[[float, str], None] | None = None,
                          cancel: Callable[[], bool] | None = None, package: Any = None,
                          threshold: float = 0.5) -> np.ndarray:
    """Tumour probability ``(K, S, S)`` of a prepared study ``x (K, C, S, S)``, slice by slice in batches.

    The forward runs on the runtime :func:`MedDLLib.runtime.runner_for` chooses for ``network`` and ``package``
    (masks at ``threshold`` with Dice >= 0.995 against torch fp32; torch when no package is known or no runtime
    agrees); ``network`` may be that :class:`MedDLLib.runtime.Runner` itself (e.g.
    :meth:`MedDLLib.pipeline.LoadedModel.runner`: a recorded export runs without torch). The last batch is padded
    to ``batch_size`` so every batch has one shape (one compiled graph).

    Raises:
        Cancelled: ``cancel()`` became true.
    """
    from MedDLLib import runtime

    run = runtime.runner_for(network, package, agree=runtime.masks_agree(threshold))
    out = []
    for start in range(0, len(x), batch_size):
        if cancel is not None and cancel():
            raise Cancelled("cancelled by the user")
        batch = np.ascontiguousarray(x[start:start + batch_size], dtype=np.float32)
        n = len(batch)
        if n < batch_size and len(x) > batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - n,) + batch.shape[1:], np.float32)])
        out.append(runtime.sigmoid(run(batch, calls=-(-(len(x) - start) // batch_size))[:n, 0]))
        if progress is not None:
            done = min(len(x), start + n)
            progress(done / len(x), f"segmented {done} of {len(x)} slices")
    return np.concatenate(out)


def postprocess(probability: np.ndarray, threshold: float = 0.5, largest_component: bool = True) -> np.ndarray:
    """Binary tumour mask ``(K, H, W)``: threshold, then (optionally) the largest 3D connected component."""
    mask = np.asarray(probability) >= threshold
    if largest_component and mask.any():
        # as MONAI's KeepLargestConnectedComponent(connectivity=3) (26-neighbourhood; of equal sizes the last
        # label wins), without importing MONAI (2 s) at inference. Labelled inside the mask's bounding box only
        # (the same labels: the box holds every foreground voxel, in the same raster order) and counted a chunk
        # at a time (bincount makes an int64 copy of what it counts).
        from scipy import ndimage

        box = tuple(slice(int(idx[0]), int(idx[-1]) + 1) for idx in
                    (np.flatnonzero(mask.any(axis=axes)) for axes in ((1, 2), (0, 2), (0, 1))))
        labels, n = ndimage.label(mask[box], structure=ndimage.generate_binary_structure(3, 3))
        if n > 1:
            flat = labels.reshape(-1)
            sizes = np.zeros(n + 1, dtype=np.int64)
            for start in range(0, flat.size, 2**18):
                sizes += np.bincount(flat[start:start + 2**18], minlength=n + 1)
            sizes[0] = 0
            mask[box] = labels == int(np.flatnonzero(sizes == sizes.max())[-1])
    return mask


@dataclasses.dataclass
class Segmentation:
    """Result of :func:`segment_study`: probability and mask on the input grid ``(K, H, W)``, and each slice's
    highest probability on the network's grid ``peak (K,)`` (before the resampling to the input grid)."""

    probability: np.ndarray
    mask: np.ndarray
    prepared: preprocess.Prepared
    peak: np.ndarray


def check_channels(image: np.ndarray, metadata: dict[str, Any]) -> None:
    """Raise :class:`InputError` when ``image (K, C, H, W)`` does not have the model's input channels."""
    channels = metadata["input"]["channels"]
    n = channels if isinstance(channels, int) else len(channels)
    if image.ndim != 4 or image.shape[1] != n:
        raise InputError(f"the model expects {n} channel(s) {channels}, got an image of shape {image.shape} "
                         "(K slices, C channels, H, W)")


def segment_study(image: np.ndarray, network: Any, metadata: dict[str, Any], device: Any = "cpu",
                  progress: Callable[[float, str], None] | None = None,
                  cancel: Callable[[], bool] | None = None, package: Any = None) -> Segmentation:
    """Run the 2D network slice by slice on ``image (K, C, H, W)`` and post-process as the model's recipe says.

    ``package``: the model package ``network`` was loaded from (its runtime export is used; see
    :func:`predict_probabilities`)."""
    check_channels(image, metadata)
    prepared = preprocess.prepare(image, metadata["recipe"], int(metadata["input"]["size"]))
    post = metadata.get("postprocessing", {})
    prob_grid = predict_probabilities(network, prepared.x, device, progress=progress, cancel=cancel, package=package,
                                      threshold=float(post.get("threshold", 0.5)))
    probability = preprocess.to_input_grid(prob_grid, prepared.crop, prepared.input_hw)
    mask = postprocess(probability, float(post.get("threshold", 0.5)), bool(post.get("largest_component", False)))
    return Segmentation(probability, mask, prepared, prob_grid.reshape(len(prob_grid), -1).max(axis=1, initial=0.0))


def case_image(case: dataset.LGGCase, channels: Sequence[str]) -> np.ndarray:
    """``(K, C, H, W)`` of a kaggle_3m case with the model's channels (all three, or FLAIR alone)."""
    image = dataset.read_slices(case)
    index = [dataset.CHANNELS.index(c) for c in channels]
    return image[:, index]


def channel_names(metadata: dict[str, Any]) -> list[str]:
    channels = metadata["input"]["channels"]
    if isinstance(channels, int) or any(c not in dataset.CHANNELS for c in channels):
        raise ModelError(f"model input channels {channels!r} are not among {dataset.CHANNELS}")
    return list(channels)


# ------------------------------------------------------------------------------------------------ training
def _load_slice(item: tuple[str, str, int]) -> tuple[np.ndarray, np.ndarray]:
    x_path, y_path, k = item
    x = np.load(x_path, mmap_mode="r")[k]
    y = np.load(y_path, mmap_mode="r")[k]
    return np.array(x, dtype=np.float32), np.array(y[None], dtype=np.float32)


def _flip(sample: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Left-right flip with probability 1/2 (the augmentation of the training set)."""
    x, y = sample
    if np.random.random() < 0.5:
        return np.ascontiguousarray(x[..., ::-1]), np.ascontiguousarray(y[..., ::-1])
    return x, y


def _validate(recipe: Recipe, case_of_item: np.ndarray, network: Any, loader: Any, device: Any) -> dict[str, float]:
    """Validation metrics on the network grid; ``dice`` is the recipe's selection metric."""
    import torch

    from MedDLLib.evaluation import dice_per_slice, dice_per_volume

    probs, targets = [], []
    for x, y in loader:
        probs.append(torch.sigmoid(network(x.to(device))).float().cpu().numpy()[:, 0])
        targets.append(y.numpy()[:, 0])
    pred = np.concatenate(probs) >= 0.5
    truth = np.concatenate(targets) > 0.5
    per_slice_all = float(dice_per_slice(pred, truth, include_empty=True).mean())
    per_patient = [dice_per_volume(pred[case_of_item == c], truth[case_of_item == c]) for c in np.unique(case_of_item)]
    metrics = {"dice_per_slice_all": per_slice_all, "dice_per_patient_mean": float(np.mean(per_patient))}
    metrics["dice"] = per_slice_all if recipe.split == "slice" else metrics["dice_per_patient_mean"]
    return metrics


def split_items(case_index: np.ndarray, patients: np.ndarray, split: str, seed: int,
                val_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Train/validation indices of the slices: by patient (honest) or by slice (the leaky seed protocol)."""
    from MedDLLib.evaluation import train_val_split

    if split == "patient":
        return train_val_split(patients[case_index], val_fraction, seed)
    order = np.random.default_rng(seed).permutation(len(case_index))
    n_val = max(1, int(round(val_fraction * len(order))))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def train_model(data: str | Path, out: str | Path, *, recipe: str = "improved", network: str = DEFAULT_NETWORK,
              width: int = DEFAULT_WIDTH, size: int | None = None, channels: Sequence[str] = dataset.CHANNELS,
              epochs: int | None = None, max_minutes: float | None = None, seed: int = 0,
              device: str | None = None, force_cpu: bool = False, batch_size: int | None = None,
              lr: float | None = None, progress: bool | None = None) -> Any:
    """Train a segmentation model package on a kaggle_3m dataset (real or phantom) with a recipe.

    Args:
        data: dataset folder (``kaggle_3m`` or its parent).
        out: model package folder to write.
        recipe: ``seed`` or ``improved`` (see :data:`RECIPES`).
        network, width: see :func:`network_spec`.
        size: network input side S (default: the slice size rounded down to a multiple of 32).
        channels: input channels, all three (default) or ``("FLAIR",)``.
        epochs, max_minutes, seed, device, force_cpu, batch_size, lr: training settings (None: the recipe's).

    Returns:
        :class:`MedDLLib.training.TrainResult`.
    """
    from MedDLLib.datasets import FileDataset
    from MedDLLib.models import build_network
    from MedDLLib.training import TrainConfig, seed_everything, train

    if recipe not in RECIPES:
        raise InputError(f"unknown recipe {recipe!r}; expected one of {sorted(RECIPES)}")
    rec = RECIPES[recipe]
    channels = list(channels)
    for c in channels:
        if c not in dataset.CHANNELS:
            raise InputError(f"unknown channel {c!r}; expected some of {dataset.CHANNELS}")
    cases = [c for c in dataset.scan_dataset(data)]
    missing = [c.case_id for c in cases if not c.has_masks]
    if missing:
        raise InputError(f"cases without _mask.tif files cannot be used for training: {', '.join(missing[:5])}")
    if len(cases) < 2:
        raise InputError(f"{data}: training needs at least 2 patients, found {len(cases)}")
    seed_everything(seed)
    with tempfile.TemporaryDirectory(prefix="meddl-lgg-cache-") as cache:
        items, case_index, tumour = [], [], []
        for ci, case in enumerate(cases):
            image = case_image(case, channels)
            if size is None:
                size = max(32, (image.shape[-1] // 32) * 32)
            prepared = preprocess.prepare(image, recipe, size)
            target = preprocess.target_on_grid(dataset.read_masks(case, image.shape[-2:]), prepared.crop)
            x_path, y_path = Path(cache) / f"{ci}_x.npy", Path(cache) / f"{ci}_y.npy"
            np.save(x_path, prepared.x.astype(np.float32))
            np.save(y_path, target)
            for k in range(len(target)):
                items.append((str(x_path), str(y_path), k))
                case_index.append(ci)
                tumour.append(bool(target[k].any()))
        case_index_arr, tumour_arr = np.array(case_index), np.array(tumour)
        patients = np.array([c.patient_id for c in cases])
        tr, va = split_items(case_index_arr, patients, rec.split, seed)
        weights = None
        if rec.tumour_fraction is not None and tumour_arr[tr].any() and (~tumour_arr[tr]).any():
            n_t, n_e = tumour_arr[tr].sum(), (~tumour_arr[tr]).sum()
            weights = np.where(tumour_arr[tr], rec.tumour_fraction / n_t, (1 - rec.tumour_fraction) / n_e)
        spec = network_spec(network, len(channels), width)
        metadata = {
            "task": TASK, "version": VERSION, "recipe": recipe, "network": spec,
            "input": {"channels": channels, "size": size, "normalisation": preprocess.RECIPE_NORMALISATION[recipe],
                      "brain_crop": recipe == "improved", "slice_axis": "k (acquisition axis)",
                      "tif_spacing_mm": list(dataset.NOMINAL_SPACING_MM)},
            "output": {"labels": LABELS, "activation": "sigmoid"},
            "postprocessing": {"threshold": 0.5, "largest_component": rec.largest_component},
            "validation": {"split": rec.split, "metric": "dice_per_slice_all" if rec.split == "slice"
                           else "dice_per_patient_mean"},
            "training_data": {"kind": "synthetic" if (Path(data) / "phantom.json").is_file() else "real",
                              "n_studies": len(cases),
                              "description": f"kaggle_3m layout at {Path(data).name}: {len(cases)} patients, "
                                             f"{len(items)} slices ({int(tumour_arr.sum())} with tumour)"},
            "metrics": {},
        }
        net = build_network(metadata)
        config = TrainConfig(out=Path(out), epochs=epochs or rec.epochs, max_minutes=max_minutes,
                             batch_size=batch_size or rec.batch_size, lr=lr or rec.lr, seed=seed, device=device,
                             force_cpu=force_cpu, metric="dice", metric_mode="max", drop_last=len(tr) > 2,
                             progress=progress)
        train_ds = FileDataset([items[i] for i in tr], _load_slice, transform=_flip)
        val_ds = FileDataset([items[i] for i in va], _load_slice)
        validate = functools.partial(_validate, rec, case_index_arr[va])
        return train(net, train_ds, val_ds, make_loss(rec), config, metadata=metadata, validate_fn=validate,
                     sample_weights=weights)


# ------------------------------------------------------------------------------------------------ evaluation
@dataclasses.dataclass
class CaseResult:
    """Per-patient evaluation row."""

    case_id: str
    patient_id: str
    dice: float
    iou: float
    features: dict[str, float]
    mask: np.ndarray = dataclasses.field(repr=False)
    truth: np.ndarray = dataclasses.field(repr=False)


def evaluate_cases(cases: Sequence[dataset.LGGCase], network: Any, metadata: dict[str, Any],
                   device: Any = "cpu") -> list[CaseResult]:
    """Segment every case and score it against its masks (3D Dice/IoU) with the predicted-mask features."""
    from MedDLLib.evaluation import dice_per_volume, iou_per_volume

    from .features import tumour_features

    channels = channel_names(metadata)
    rows = []
    for case in cases:
        image = case_image(case, channels)
        truth = dataset.read_masks(case, image.shape[-2:])
        seg = segment_study(image, network, metadata, device)
        geometry = dataset.nominal_geometry(truth.shape)
        rows.append(CaseResult(case.case_id, case.patient_id, dice_per_volume(seg.mask, truth),
                               iou_per_volume(seg.mask, truth), tumour_features(seg.mask, geometry).row(),
                               seg.mask, truth))
    return rows


def summarize(rows: Sequence[CaseResult], metadata: dict[str, Any] | None = None, seed: int = 0) -> dict[str, Any]:
    """Flat metrics: per-patient Dice (mean with bootstrap CI, median), per-slice Dice with and without empty
    slices, IoU, the gap between the leaky per-slice protocol and the per-patient one, and (when the model's
    training record has it) the gap between its validation figure and the held-out per-patient Dice."""
    from MedDLLib.evaluation import bootstrap_ci, dice_per_slice

    dice = np.array([r.dice for r in rows])
    mean, low, high = bootstrap_ci(np.mean, dice, seed=seed) if len(dice) > 1 else (float(dice.mean()),) * 3
    slices_all = np.concatenate([dice_per_slice(r.mask, r.truth, include_empty=True) for r in rows])
    slices_ne = np.concatenate([dice_per_slice(r.mask, r.truth, include_empty=False) for r in rows])
    metrics: dict[str, Any] = {
        "dice_per_patient_mean": float(mean), "dice_per_patient_mean_ci_low": float(low),
        "dice_per_patient_mean_ci_high": float(high), "dice_per_patient_median": float(np.median(dice)),
        "dice_per_slice_all": float(slices_all.mean()),
        "dice_per_slice_nonempty": float(slices_ne.mean()) if len(slices_ne) else math.nan,
        "iou_per_patient_mean": float(np.mean([r.iou for r in rows])),
        "n_patients": len(rows), "n_slices": int(len(slices_all)), "n_slices_nonempty": int(len(slices_ne)),
    }
    metrics["protocol_gap_slice_all_minus_patient"] = metrics["dice_per_slice_all"] - metrics["dice_per_patient_mean"]
    best = ((metadata or {}).get("training") or {}).get("best_metrics") or {}
    if "dice" in best:
        metrics["training_validation_dice"] = float(best["dice"])
        metrics["training_validation_split"] = (metadata or {}).get("validation", {}).get("split", "")
        metrics["leakage_gap_validation_minus_heldout"] = float(best["dice"]) - metrics["dice_per_patient_mean"]
    return metrics


def evaluate_model(data: str | Path, model: str | Path, device: Any = "cpu", seed: int = 0) -> dict[str, Any]:
    """Evaluate a model package on every case of a kaggle_3m dataset; adds the death01 model when data.csv allows.

    Returns:
        the metrics of :func:`summarize` plus ``death01_*`` (or ``death01_note`` when the outcome model could
        not be fitted) and ``recipe``/``network``.
    """
    import pandas as pd

    from MedDLLib.models import load_package

    from .features import death_model_auroc

    package = load_package(model)
    network = package.network(device)
    cases = dataset.scan_dataset(data)
    unlabeled = [c.case_id for c in cases if not c.has_masks]
    if unlabeled:
        raise InputError(f"cases without _mask.tif files cannot be evaluated: {', '.join(unlabeled[:5])}")
    from MedDLLib import runtime

    runtime.attach(network, package)
    rows = evaluate_cases(cases, network, package.metadata, device)
    metrics = summarize(rows, package.metadata, seed)
    metrics["recipe"] = package.metadata["recipe"]
    metrics["network"] = package.metadata["network"]["name"]
    metrics["runtime"] = runtime.forwards_run(network)
    try:
        clinical = dataset.read_clinical(data)
        feats = pd.DataFrame([r.features for r in rows], index=[r.patient_id for r in rows])
        metrics.update(death_model_auroc(feats, clinical, seed=seed))
    except InputError as exc:
        metrics["death01_note"] = str(exc)
    return metrics


def nominal_geometry_for(image: np.ndarray) -> Geometry:
    """Nominal geometry of a ``(K, C, H, W)`` .tif study."""
    return dataset.nominal_geometry((image.shape[0], image.shape[2], image.shape[3]))


# ------------------------------------------------------------------------------------------------ published U-Net
BUDA_NETWORK = "lgg.buda_unet"
BUDA_RECIPE = "buda-unet"
BUDA_SOURCE = ("Buda et al. 2019 kaggle_3m brain MRI U-Net, mateuszbuda/brain-segmentation-pytorch (MIT licence), "
               "weights file unet-e012d006.pt")


def _buda_block(prefix: str, in_channels: int, features: int) -> Any:
    """Two 3x3 conv (no bias) + batch norm + ReLU, named ``<prefix>conv1, <prefix>norm1, ...`` as upstream."""
    from collections import OrderedDict

    from torch import nn

    return nn.Sequential(OrderedDict([
        (f"{prefix}conv1", nn.Conv2d(in_channels, features, 3, padding=1, bias=False)),
        (f"{prefix}norm1", nn.BatchNorm2d(features)),
        (f"{prefix}relu1", nn.ReLU(inplace=True)),
        (f"{prefix}conv2", nn.Conv2d(features, features, 3, padding=1, bias=False)),
        (f"{prefix}norm2", nn.BatchNorm2d(features)),
        (f"{prefix}relu2", nn.ReLU(inplace=True)),
    ]))


def _buda_unet_class() -> type:
    import torch
    from torch import nn

    class BudaUNet(nn.Module):
        """The 2D U-Net of Buda et al. (``mateuszbuda/brain-segmentation-pytorch``), with the same state-dict keys.

        Four encoder levels of ``init_features * 2**l`` channels, a bottleneck, transposed-convolution upsampling
        and skip connections; ``(B, in_channels, H, W) -> (B, out_channels, H, W)`` **logits** (upstream applies
        the sigmoid inside ``forward``; MedDL applies it after, as for its own LGG networks). H and W multiples of
        16.
        """

        def __init__(self, in_channels: int = 3, out_channels: int = 1, init_features: int = 32):
            super().__init__()
            f = init_features
            self.encoder1, self.pool1 = _buda_block("enc1", in_channels, f), nn.MaxPool2d(2, 2)
            self.encoder2, self.pool2 = _buda_block("enc2", f, f * 2), nn.MaxPool2d(2, 2)
            self.encoder3, self.pool3 = _buda_block("enc3", f * 2, f * 4), nn.MaxPool2d(2, 2)
            self.encoder4, self.pool4 = _buda_block("enc4", f * 4, f * 8), nn.MaxPool2d(2, 2)
            self.bottleneck = _buda_block("bottleneck", f * 8, f * 16)
            self.upconv4, self.decoder4 = nn.ConvTranspose2d(f * 16, f * 8, 2, 2), _buda_block("dec4", f * 16, f * 8)
            self.upconv3, self.decoder3 = nn.ConvTranspose2d(f * 8, f * 4, 2, 2), _buda_block("dec3", f * 8, f * 4)
            self.upconv2, self.decoder2 = nn.ConvTranspose2d(f * 4, f * 2, 2, 2), _buda_block("dec2", f * 4, f * 2)
            self.upconv1, self.decoder1 = nn.ConvTranspose2d(f * 2, f, 2, 2), _buda_block("dec1", f * 2, f)
            self.conv = nn.Conv2d(f, out_channels, 1)

        def forward(self, x: "torch.Tensor") -> "torch.Tensor":
            e1 = self.encoder1(x)
            e2 = self.encoder2(self.pool1(e1))
            e3 = self.encoder3(self.pool2(e2))
            e4 = self.encoder4(self.pool3(e3))
            d = self.bottleneck(self.pool4(e4))
            d = self.decoder4(torch.cat((self.upconv4(d), e4), dim=1))
            d = self.decoder3(torch.cat((self.upconv3(d), e3), dim=1))
            d = self.decoder2(torch.cat((self.upconv2(d), e2), dim=1))
            d = self.decoder1(torch.cat((self.upconv1(d), e1), dim=1))
            return self.conv(d)

    BudaUNet.__module__ = __name__
    BudaUNet.__qualname__ = "BudaUNet"
    return BudaUNet


def __getattr__(name: str) -> Any:  # BudaUNet is built on first use (torch is imported lazily here)
    if name == "BudaUNet":
        cls = _buda_unet_class()
        globals()["BudaUNet"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def buda_metadata(size: int = 256) -> dict[str, Any]:
    """LGG package metadata for Buda et al.'s U-Net: 3 channels (pre-contrast, FLAIR, post-contrast), 256 px, the
    upstream normalisation (crop to the non-zero box, p10-p99 to [0, 1], z-score), threshold 0.5 and the largest
    connected component."""
    return {
        "task": TASK, "version": "1.0.0", "recipe": BUDA_RECIPE,
        "network": {"name": BUDA_NETWORK, "args": {"in_channels": 3, "out_channels": 1, "init_features": 32}},
        "input": {"channels": list(dataset.CHANNELS), "size": size,
                  "normalisation": preprocess.RECIPE_NORMALISATION[BUDA_RECIPE], "brain_crop": True,
                  "slice_axis": "k (acquisition axis)", "tif_spacing_mm": list(dataset.NOMINAL_SPACING_MM)},
        "output": {"labels": LABELS, "activation": "sigmoid"},
        "postprocessing": {"threshold": 0.5, "largest_component": True},
        "training_data": {"kind": "real", "n_studies": 110,
                          "description": "kaggle_3m (TCGA-LGG, 110 patients), trained by Buda et al.; "
                                         "published mean per-volume Dice 91 % on 10 validation cases (upstream "
                                         "README), 82 % mean per-patient Dice in cross-validation (Buda et al. "
                                         "2019, Computers in Biology and Medicine)"},
        "metrics": {"dice_per_volume_mean_published": 0.91, "dice_per_patient_mean_cv_published": 0.82},
        "source": BUDA_SOURCE,
    }


def import_buda_unet(src: str | Path, name: str | None = None, overwrite: bool = False) -> Path:
    """``meddl models import --format buda-unet unet-e012d006.pt``: the published state dict as an LGG package.

    The file is read weights-only; its keys and shapes must be exactly those of :class:`BudaUNet` (3 -> 1, 32
    features: 118 entries), else it is refused naming the first mismatching key. The package is written to a
    staging folder, then imported like any package (verified, never replacing a model unless it passes).
    """
    from MedDLLib import models

    source = Path(src).expanduser()
    if not source.is_file():
        raise ModelError(f"cannot import {source}: not a file (expected Buda et al.'s unet-e012d006.pt)")
    state = models.read_state_dict(source)
    meta = buda_metadata()
    expected = models.build_network(meta, on_meta=True).state_dict()
    models.check_state_fits(expected, state, f"{source} is not Buda et al.'s U-Net state dict")
    with tempfile.TemporaryDirectory(prefix=".buda-", dir=models.cache_dir()) as tmp:
        package = models.save_package(Path(tmp) / (name or "lgg-buda-unet"), state, meta)
        return models.import_model(package, name=name or "lgg-buda-unet", overwrite=overwrite)
