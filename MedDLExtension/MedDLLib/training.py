"""The one training loop every MedDL task uses: :func:`train`.

A task brings its datasets (see :mod:`MedDLLib.datasets`), a network, a loss and, optionally, a validation
function that returns the task's metrics; :func:`train` does the rest:

* seeds Python, NumPy and torch (and, through a per-epoch generator, every DataLoader worker) from
  ``config.seed``; turns on ``torch.use_deterministic_algorithms(True, warn_only=True)`` for the run
  (``config.deterministic``) and restores the previous setting afterwards;
* streams batches from disk, shuffled per epoch by :class:`torch.utils.data.DistributedSampler` (or
  :class:`~MedDLLib.datasets.WeightedDistributedSampler` when ``sample_weights`` are given), also with one
  process, so one code path serves both;
* mixed precision (float16 autocast + gradient scaling) on CUDA when ``config.amp``; silently off on the CPU;
* validates after every epoch and saves the best epoch by ``config.metric`` as a model package through
  :func:`MedDLLib.models.save_package` (metadata ``training``: best metrics, epochs, seed, time, world size);
* stops at ``config.max_minutes`` (checked after every step) keeping the best package;
* writes, in the training folder beside the package (:func:`training_dir`: ``<out>.training/``),
  ``training_log.jsonl`` (one JSON object per epoch), ``training_curves.png`` and a resumable
  ``training_state.pt`` (last weights, optimizer, scheduler, gradient scaler, epoch, RNG states of every rank,
  best metric, history); ``config.resume`` continues from that state and gives the same result as an
  uninterrupted run. (Beside, not inside: :func:`~MedDLLib.models.save_package` replaces the package folder
  atomically and the package stays a plain MONAI-bundle folder that ``meddl models import`` copies.)
* tqdm progress bars on the main process when stderr is a terminal, a log line every ``config.log_every``
  steps through :mod:`logging` otherwise, and one summary line per epoch on stderr.

Distributed data parallel: the same call runs under PyTorch's launcher, one process per GPU (or CPU
process), on one or many machines::

    torchrun --standalone --nproc_per_node 2 my_training_script.py ...           # one machine
    torchrun --nnodes 2 --node_rank 0 --rdzv_endpoint host:29500 --nproc_per_node 4 my_training_script.py ...

:func:`train` reads ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` (set by torchrun), initialises the process group
(``nccl`` on CUDA, ``gloo`` on the CPU) unless the caller already did, wraps the network in
:class:`~torch.nn.parallel.DistributedDataParallel`, and tears the group down at the end if it created it.
Each rank trains on its share of every epoch; the training loss is averaged over all ranks. **Validation runs
on rank 0 only**, over the whole validation set with the unwrapped network (metrics such as AUROC or C-index
are not averages of per-rank values), and its metrics are broadcast so all ranks agree on the best epoch, the
learning-rate schedule and when to stop. Only rank 0 reads and writes files (package, log, state); the other
ranks receive the resume state and the best weights through the process group, so the machines of a
multi-machine run need no shared file system (``out`` lives on rank 0's machine). ``batch_size`` is per process.

Conventions: a batch is ``(inputs, targets)`` as produced by the DataLoader from ``(input, target)`` samples;
``loss_fn(network(inputs), targets)`` must return a scalar tensor. ``inputs`` and ``targets`` may be tensors or
tuples/lists/dicts of tensors; they are moved to the device as they are. Epochs are numbered from 1.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import gc
import json
import logging
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .datasets import WeightedDistributedSampler
from .errors import InputError, MedDLError, ModelError
from .io import atomic_path, atomic_write_text

logger = logging.getLogger(__name__)

__all__ = [
    "TrainConfig",
    "TrainResult",
    "WorldInfo",
    "train",
    "world_info",
    "is_main_process",
    "seed_everything",
    "predict_loader",
    "plot_history",
    "training_dir",
    "TRAINING_LOG",
    "TRAINING_CURVES",
    "TRAINING_STATE",
]

#: Suffix of the training folder beside the package (see :func:`training_dir`).
TRAINING_DIR_SUFFIX = ".training"
#: One JSON object per epoch: epoch, train_loss (mean over all samples and ranks), val (metrics), lr (after the
#: epoch's scheduler step), seconds (training + validation of the epoch), elapsed_seconds (since the first run
#: started, across resumes, including checkpointing), is_best, partial (cut short by the time budget).
TRAINING_LOG = "training_log.jsonl"
#: Loss and validation-metric curves (PNG).
TRAINING_CURVES = "training_curves.png"
#: Everything needed to resume (``torch.load(..., weights_only=True)``-safe).
TRAINING_STATE = "training_state.pt"

#: How long ranks wait for each other (e.g. while rank 0 validates) before the process group gives up.
DISTRIBUTED_TIMEOUT = datetime.timedelta(minutes=60)

ValidateFn = Callable[[nn.Module, DataLoader, torch.device], Mapping[str, float]]


# --------------------------------------------------------------------------------------------------------------
# configuration and result


@dataclasses.dataclass
class TrainConfig:
    """Settings of one :func:`train` run.

    Attributes:
        out: model package folder to write (created or replaced; must not be a non-package folder). The
            training log, curves and resumable state go to :func:`training_dir` (``<out>.training``).
        epochs: number of epochs to train (counting epochs done before a resume).
        max_minutes: wall-clock budget of this call in minutes (``None``: none); checked after every step,
            training stops when it is spent and the best package is kept. At least one step and one
            validation always run.
        batch_size: samples per step and per process.
        lr: learning rate of the default optimizer (Adam).
        seed: seed of every random number generator (Python, NumPy, torch, samplers, DataLoader workers).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``None``/``"auto"`` (see
            :func:`MedDLLib.device.select_device`); under torchrun, ``"cuda"``/auto means ``cuda:LOCAL_RANK``.
        force_cpu: use the CPU whatever ``device`` says.
        amp: float16 mixed precision with gradient scaling; only used on CUDA, silently off on the CPU.
        num_workers: DataLoader worker processes per training process (0: load in the main process).
        metric: name of the validation metric (a key of ``validate_fn``'s result) that picks the best epoch.
        metric_mode: ``"max"`` (e.g. AUROC, Dice) or ``"min"`` (e.g. loss); ties keep the earlier epoch.
        resume: continue an interrupted run of the same ``out``: its ``training_state.pt``, the training
            folder holding it, or the package folder ``out`` itself.
        log_every: steps between progress updates (progress-bar postfix, or a log line when bars are off).
        deterministic: ``torch.use_deterministic_algorithms(True, warn_only=True)`` during the run.
        drop_last: drop the last incomplete training batch of each epoch (avoids BatchNorm on a single sample).
        progress: show tqdm bars: ``None`` = when stderr is a terminal (main process only).
    """

    out: Path
    epochs: int = 10
    max_minutes: float | None = None
    batch_size: int = 8
    lr: float = 1e-3
    seed: int = 0
    device: str | None = None
    force_cpu: bool = False
    amp: bool = True
    num_workers: int = 0
    metric: str = "loss"
    metric_mode: str = "min"
    resume: Path | None = None
    log_every: int = 50
    deterministic: bool = True
    drop_last: bool = False
    progress: bool | None = None

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.resume is not None:
            self.resume = Path(self.resume)
        checks = [
            (isinstance(self.epochs, int) and self.epochs >= 1, f"epochs must be an integer >= 1, got {self.epochs!r}"),
            (self.max_minutes is None or (math.isfinite(self.max_minutes) and self.max_minutes > 0),
             f"max_minutes must be > 0 or None, got {self.max_minutes!r}"),
            (isinstance(self.batch_size, int) and self.batch_size >= 1,
             f"batch_size must be an integer >= 1, got {self.batch_size!r}"),
            (math.isfinite(self.lr) and self.lr > 0, f"lr must be > 0, got {self.lr!r}"),
            (isinstance(self.num_workers, int) and self.num_workers >= 0,
             f"num_workers must be an integer >= 0, got {self.num_workers!r}"),
            (self.metric_mode in ("max", "min"), f"metric_mode must be 'max' or 'min', got {self.metric_mode!r}"),
            (isinstance(self.log_every, int) and self.log_every >= 1,
             f"log_every must be an integer >= 1, got {self.log_every!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(f"invalid training configuration: {message}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly copy (paths as strings)."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns (identical on every rank).

    Attributes:
        package: the model package folder holding the best epoch's weights.
        training_dir: the folder with ``training_log.jsonl``, ``training_curves.png``, ``training_state.pt``.
        best_epoch: epoch (from 1) whose weights are in the package.
        best_metrics: that epoch's validation metrics.
        epochs_run: epochs completed in total, including those before a resume.
        stopped_early: the time budget ended training before ``config.epochs``.
        seconds: training wall time in seconds, including the runs before a resume.
        history: one dict per epoch, the lines of ``training_log.jsonl``.
        world_size: number of processes that trained.
        device: the device this process trained on.
        amp: whether mixed precision was actually used.
    """

    package: Path
    training_dir: Path
    best_epoch: int
    best_metrics: dict[str, float]
    epochs_run: int
    stopped_early: bool
    seconds: float
    history: list[dict[str, Any]]
    world_size: int
    device: str
    amp: bool


# --------------------------------------------------------------------------------------------------------------
# distributed helpers


@dataclasses.dataclass(frozen=True)
class WorldInfo:
    """This process's place in a (possibly) distributed run.

    Attributes:
        rank: global rank, 0 on the main process.
        local_rank: rank on this machine (the GPU index under torchrun).
        world_size: number of processes in the run (1 without torchrun).
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1


def world_info() -> WorldInfo:
    """Rank, local rank and world size: from the process group when initialised, else torchrun's variables.

    Raises:
        InputError: ``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` are set but not consistent integers.
    """
    values = {}
    for name, default in (("RANK", 0), ("LOCAL_RANK", 0), ("WORLD_SIZE", 1)):
        text = os.environ.get(name, "")
        try:
            values[name] = int(text) if text.strip() else default
        except ValueError:
            raise InputError(f"environment variable {name}={text!r} is not an integer") from None
    if dist.is_available() and dist.is_initialized():
        return WorldInfo(dist.get_rank(), values["LOCAL_RANK"], dist.get_world_size())
    info = WorldInfo(values["RANK"], values["LOCAL_RANK"], values["WORLD_SIZE"])
    if info.world_size < 1 or not 0 <= info.rank < info.world_size or info.local_rank < 0:
        raise InputError(f"inconsistent distributed environment: RANK={info.rank}, LOCAL_RANK={info.local_rank}, "
                         f"WORLD_SIZE={info.world_size}")
    return info


def is_main_process() -> bool:
    """True on rank 0 (and always without distributed training): the process that writes files and prints."""
    return world_info().rank == 0


def _init_process_group(world: WorldInfo, device: torch.device) -> bool:
    """Initialise the default process group for ``world``; return whether this call created it."""
    if not world.distributed or dist.is_initialized():
        return False
    if not dist.is_available():
        raise InputError("WORLD_SIZE > 1 but this torch build has no torch.distributed support")
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if missing:
        raise InputError(f"WORLD_SIZE={world.world_size} but {', '.join(missing)} not set: launch distributed "
                         "training with `torchrun` (python -m torch.distributed.run)")
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend=backend, rank=world.rank, world_size=world.world_size,
                            timeout=DISTRIBUTED_TIMEOUT, **kwargs)
    return True


def _select_device(config: TrainConfig, world: WorldInfo) -> torch.device:
    from .device import select_device

    requested = config.device
    auto = requested is None or str(requested).strip().lower() in ("auto", "cuda")
    if world.distributed and auto and not config.force_cpu and torch.cuda.is_available():
        requested = f"cuda:{world.local_rank}"  # one GPU per process under torchrun
    device = select_device(requested, force_cpu=config.force_cpu)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def _broadcast(obj: Any, world: WorldInfo) -> Any:
    """``obj`` from rank 0 on every rank."""
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _any_rank(flag: bool, world: WorldInfo, device: torch.device) -> bool:
    """True when ``flag`` is true on at least one rank."""
    if not world.distributed:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


# --------------------------------------------------------------------------------------------------------------
# seeding


def seed_everything(seed: int) -> None:
    """Seed Python's :mod:`random`, NumPy's global generator and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of the DataLoader generator for one epoch on one rank (independent of anything that ran before).

    The DataLoader draws its ``base_seed`` from that generator when an epoch starts and seeds Python's
    :mod:`random`, torch and NumPy in worker ``w`` from ``(base_seed, w)`` itself, so augmentations in workers
    are distinct per worker, per rank and per epoch, and reproducible (also after a resume). With
    ``num_workers=0`` they draw from the main process's generators, which the resumable state restores.
    """
    return int(np.random.SeedSequence([seed % 2**32, epoch, rank]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _rng_state() -> dict[str, Any]:
    """Global RNG states in a form ``torch.load(weights_only=True)`` accepts."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: Mapping[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------------------------------
# small helpers


def _to_device(obj: Any, device: torch.device) -> Any:
    """``obj`` (tensor or nested tuple/list/dict of tensors) on ``device``; other leaves unchanged."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=device.type == "cuda")
    if isinstance(obj, Mapping):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


def _batch_length(obj: Any) -> int:
    """Number of samples in a batch: the length of its first tensor."""
    if isinstance(obj, torch.Tensor):
        return int(obj.shape[0]) if obj.ndim else 1
    if isinstance(obj, Mapping):
        obj = list(obj.values())
    if isinstance(obj, (tuple, list)):
        for value in obj:
            length = _batch_length(value)
            if length:
                return length
    return 0


def _split_batch(batch: Any) -> tuple[Any, Any]:
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise InputError(f"a training batch must be a pair (inputs, targets); got {type(batch).__name__}"
                         + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
                         + ": make the dataset return (input, target) samples")
    return batch[0], batch[1]


def _concat(parts: list[Any]) -> Any:
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat([p.reshape(1) if p.ndim == 0 else p for p in parts])
    if isinstance(first, Mapping):
        return {k: _concat([p[k] for p in parts]) for k in first}
    if isinstance(first, (tuple, list)):
        return type(first)(_concat(list(group)) for group in zip(*parts))
    return [x for p in parts for x in (p if isinstance(p, (list, tuple)) else [p])]


@torch.no_grad()
def predict_loader(network: nn.Module, loader: Iterable, device: torch.device) -> tuple[Any, Any]:
    """Run ``network`` over a loader of ``(inputs, targets)`` batches; the building block of a ``validate_fn``.

    Args:
        network: the model; put in eval mode for the call and restored to its previous mode.
        loader: yields ``(inputs, targets)`` batches.
        device: where to run.

    Returns:
        ``(outputs, targets)`` concatenated along the batch axis on the CPU: ``outputs`` of shape ``(N, ...)``
        as the network returns them (float32), ``targets`` with the structure of one batch's targets.
    """
    was_training = network.training
    network.eval()
    outputs, targets = [], []
    try:
        for batch in loader:
            inputs, target = _split_batch(batch)
            outputs.append(network(_to_device(inputs, device)).detach().float().cpu())
            targets.append(target)
    finally:
        network.train(was_training)
    if not outputs:
        raise InputError("the validation loader yielded no batches")
    return _concat(outputs), _concat(targets)


def _loss_validate_fn(loss_fn: Callable) -> ValidateFn:
    """Default validation: the sample-weighted mean of ``loss_fn`` over the validation set, as ``{"loss": ...}``."""

    @torch.no_grad()
    def validate(network: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
        total, count = 0.0, 0
        for batch in loader:
            inputs, targets = _split_batch(batch)
            n = _batch_length(targets) or _batch_length(inputs)
            total += float(loss_fn(network(_to_device(inputs, device)), _to_device(targets, device))) * n
            count += n
        return {"loss": total / max(count, 1)}

    return validate


def _is_better(value: float, best: float | None, mode: str) -> bool:
    """Strictly better (ties keep the earlier epoch); a finite value beats NaN, NaN never beats anything."""
    if best is None:
        return True
    if math.isnan(value):
        return False
    if math.isnan(best):
        return True
    return value > best if mode == "max" else value < best


def _clean_metrics(metrics: Any, metric: str) -> dict[str, float]:
    if not isinstance(metrics, Mapping):
        raise InputError(f"validate_fn must return a dict of metrics, got {type(metrics).__name__}")
    clean = {}
    for key, value in metrics.items():
        try:
            clean[str(key)] = float(value)
        except (TypeError, ValueError):
            raise InputError(f"validation metric {key!r} is not a number: {value!r}") from None
    if metric not in clean:
        raise InputError(f"validation returned no metric {metric!r} (TrainConfig.metric); it returned: "
                         f"{', '.join(clean) or 'nothing'}")
    return clean


def _finite_or_none(obj: Any) -> Any:
    """JSON-safe copy: NaN and infinities become ``None`` (``null``), so every log line is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj


def _write_log(path: Path, history: Sequence[Mapping[str, Any]]) -> None:
    text = "".join(json.dumps(_finite_or_none(record), allow_nan=False) + "\n" for record in history)
    atomic_write_text(path, text)


def plot_history(history: Sequence[Mapping[str, Any]], path: Path | str, metric: str | None = None) -> Path:
    """Draw the training curves of a ``training_log.jsonl`` history into a PNG (matplotlib, Agg, no pyplot).

    Left panel: training loss (and validation ``loss`` when present) per epoch; right panel: every other
    validation metric. The best epoch (``is_best`` records) is marked with a dashed line.

    Args:
        history: records with ``epoch``, ``train_loss`` and ``val`` (dict of metrics).
        path: PNG to write.
        metric: the metric that picks the best epoch (named in the title).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    epochs = [r["epoch"] for r in history]

    def values(get: Callable[[Mapping[str, Any]], Any]) -> list[float]:
        return [np.nan if get(r) is None else float(get(r)) for r in history]

    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax_loss, ax_metric = fig.subplots(1, 2)
    ax_loss.plot(epochs, values(lambda r: r["train_loss"]), "o-", label="train loss")
    names = sorted({k for r in history for k in r.get("val", {})})
    if "loss" in names:
        ax_loss.plot(epochs, values(lambda r: r["val"].get("loss")), "o-", label="validation loss")
    for name in (n for n in names if n != "loss"):
        ax_metric.plot(epochs, values(lambda r: r["val"].get(name)), "o-", label=f"validation {name}")
    best = [r["epoch"] for r in history if r.get("is_best")]
    for ax in (ax_loss, ax_metric):
        if best:
            ax.axvline(best[-1], color="grey", linestyle="--", label=f"best epoch {best[-1]}")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    ax_loss.set_title("loss")
    ax_metric.set_title("validation metrics" + (f" (best by {metric})" if metric else ""))
    fig.tight_layout()
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, format="png")
    return path


def training_dir(out: Path | str) -> Path:
    """The folder beside the package ``out`` that holds its training log, curves and resumable state.

    ``models/ich-improved`` -> ``models/ich-improved.training``.
    """
    out = Path(out).expanduser().resolve()
    return out.with_name(out.name + TRAINING_DIR_SUFFIX)


def _resolve_resume(resume: Path) -> Path:
    if resume.is_file():
        return resume
    for candidate in (resume / TRAINING_STATE, training_dir(resume) / TRAINING_STATE):
        if candidate.is_file():
            return candidate
    raise InputError(f"cannot resume: no {TRAINING_STATE} at {resume} (expected the file, the training folder "
                     f"holding it, or the package folder whose {training_dir(resume).name} folder holds it)")


def _check_package_inputs(out: Path, metadata: Mapping[str, Any], module: nn.Module) -> None:
    """Fail before training, not after the first epoch, when the package cannot be written."""
    from .models import METADATA_FILE, build_network, validate_metadata

    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / METADATA_FILE).is_file())):
        raise InputError(f"cannot write the model package to {out}: it exists and is not a model package")
    validate_metadata(metadata, "package metadata given to train()", saved=False)
    try:
        build_network(metadata).load_state_dict(module.state_dict(), strict=True)
    except RuntimeError as exc:
        raise ModelError(f"package metadata names network {metadata['network']['name']!r}, whose weights do not "
                         f"match the network being trained: {str(exc).splitlines()[0]}") from exc


def _load_state(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"cannot read training state {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != "meddl-training-state-1":
        raise ModelError(f"{path} is not a MedDL training state (format 'meddl-training-state-1')")
    return state


def _say(line: str) -> None:
    """One line for the person watching (main process): on stderr, without breaking a progress bar."""
    from tqdm.auto import tqdm

    tqdm.write(line, file=sys.stderr)


def _state_dict_cpu(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


# --------------------------------------------------------------------------------------------------------------
# the loop


def train(
    network: nn.Module,
    train_dataset: Dataset,
    val_dataset: Dataset,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    config: TrainConfig,
    *,
    metadata: Mapping[str, Any],
    optimizer_factory: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None = None,
    scheduler_factory: Callable[[torch.optim.Optimizer], Any] | None = None,
    validate_fn: ValidateFn | None = None,
    collate_fn: Callable[[list], Any] | None = None,
    sample_weights: Sequence[float] | np.ndarray | None = None,
) -> TrainResult:
    """Train ``network``, keep the best epoch as a model package, and return a summary.

    Args:
        network: the model; moved to the device, and on return holds the best epoch's weights (on the device).
        train_dataset: ``(input, target)`` samples, augmented by its own transform
            (see :class:`~MedDLLib.datasets.FileDataset`).
        val_dataset: ``(input, target)`` samples, not augmented; validated on rank 0 after every epoch.
        loss_fn: ``loss_fn(network(inputs), targets) -> scalar tensor`` (an ``nn.Module`` is moved to the device).
        config: :class:`TrainConfig`.
        metadata: the package metadata :func:`MedDLLib.models.save_package` needs (task, version, recipe,
            network name and args, input, output, training_data, metrics), checked before training starts;
            :func:`train` adds the key ``training`` (best epoch and metrics, epochs, seed, seconds, world size,
            device, amp, sample counts).
        optimizer_factory: ``parameters -> optimizer``; default ``torch.optim.Adam(parameters, lr=config.lr)``.
        scheduler_factory: ``optimizer -> scheduler`` stepped once per epoch after validation
            (``ReduceLROnPlateau`` gets the ``config.metric`` value); default none.
        validate_fn: ``(network, val_loader, device) -> {metric name: float}``, called under ``torch.no_grad()``
            with the network in eval mode (:func:`predict_loader` helps); default ``{"loss": mean loss_fn}``.
        collate_fn: the DataLoaders' ``collate_fn`` (default: torch's).
        sample_weights: ``(len(train_dataset),)`` non-negative weights for oversampling with replacement
            (e.g. ``sklearn.utils.class_weight.compute_sample_weight("balanced", labels)``); default: each
            sample once per epoch in a shuffled order.

    Returns:
        :class:`TrainResult` (the same on every rank).

    Raises:
        InputError: empty datasets, a metric missing from ``validate_fn``'s result, a bad distributed set-up,
            a resume state trained for another metric, an ``out`` folder that is not a package.
        ModelError: incomplete metadata, or a metadata network that does not fit ``network``.
        MedDLError: the training loss became NaN or infinite (the package and state of the last good epoch
            are kept).
    """
    if len(train_dataset) == 0:  # type: ignore[arg-type]
        raise InputError("the training dataset is empty")
    if val_dataset is None or len(val_dataset) == 0:  # type: ignore[arg-type]
        raise InputError("the validation dataset is empty: the best epoch is chosen on validation data")
    world = world_info()
    device = _select_device(config, world)
    previous_determinism = (torch.are_deterministic_algorithms_enabled(),
                            torch.is_deterministic_algorithms_warn_only_enabled())
    created_group = False
    try:
        if config.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by deterministic cuBLAS
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        created_group = _init_process_group(world, device)
        world = world_info()
        trainer = _Trainer(network, train_dataset, val_dataset, loss_fn, config, world, device,
                           optimizer_factory, scheduler_factory, validate_fn, dict(metadata), collate_fn,
                           sample_weights)
        result = trainer.run()
        # the DistributedDataParallel wrapper must be gone before its process group is destroyed: a DDP
        # reducer freed after destroy_process_group can hang the process on exit
        del trainer
        gc.collect()
        if world.distributed:
            dist.barrier()
        return result
    finally:
        if created_group and dist.is_initialized():
            dist.destroy_process_group()
        torch.use_deterministic_algorithms(previous_determinism[0], warn_only=previous_determinism[1])


class _Trainer:
    """State of one :func:`train` call (private: the public surface is :func:`train`)."""

    def __init__(self, network, train_dataset, val_dataset, loss_fn, config: TrainConfig, world: WorldInfo,
                 device: torch.device, optimizer_factory, scheduler_factory, validate_fn, metadata, collate_fn,
                 sample_weights) -> None:
        self.config, self.world, self.device = config, world, device
        self.main = world.rank == 0
        self.amp = bool(config.amp and device.type == "cuda")
        self.training_dir = training_dir(config.out)
        self.metadata = metadata
        self.n_train, self.n_val = len(train_dataset), len(val_dataset)

        _check_package_inputs(config.out, metadata, network)
        seed_everything(config.seed + world.rank)
        self.module = network.to(device)
        self.loss_fn = loss_fn.to(device) if isinstance(loss_fn, nn.Module) else loss_fn
        self.validate_fn = validate_fn or _loss_validate_fn(self.loss_fn)
        params = self.module.parameters()
        self.optimizer = optimizer_factory(params) if optimizer_factory else torch.optim.Adam(params, lr=config.lr)
        self.scheduler = scheduler_factory(self.optimizer) if scheduler_factory else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)

        if sample_weights is not None:
            self.sampler: DistributedSampler = WeightedDistributedSampler(
                train_dataset, sample_weights, num_replicas=world.world_size, rank=world.rank, seed=config.seed)
        else:
            self.sampler = DistributedSampler(train_dataset, num_replicas=world.world_size, rank=world.rank,
                                              shuffle=True, seed=config.seed, drop_last=False)
        self.generator = torch.Generator()
        loader_args: dict[str, Any] = dict(batch_size=config.batch_size, num_workers=config.num_workers,
                                           collate_fn=collate_fn, pin_memory=device.type == "cuda")
        self.train_loader = DataLoader(train_dataset, sampler=self.sampler, drop_last=config.drop_last,
                                       generator=self.generator, **loader_args)
        if len(self.train_loader) == 0:
            raise InputError(f"no training batch: {self.n_train} samples per process with batch_size "
                             f"{config.batch_size} and drop_last=True")
        self.val_generator = torch.Generator()
        self.val_loader = DataLoader(val_dataset, shuffle=False, generator=self.val_generator,
                                     **loader_args) if self.main else None

        # training state (possibly from a resume)
        self.start_epoch = 1
        self.best_value: float | None = None
        self.best_epoch = 0
        self.best_metrics: dict[str, float] = {}
        self.history: list[dict[str, Any]] = []
        self.seconds_before = 0.0
        if config.resume is not None:
            self._resume()

        self.network: nn.Module = self.module
        if world.distributed:
            self.network = nn.parallel.DistributedDataParallel(
                self.module, device_ids=[device.index] if device.type == "cuda" else None)

    # ---------------------------------------------------------------------------------------------------------
    def _resume(self) -> None:
        """Rank 0 reads the state (only it needs the files) and sends it to the other ranks."""
        from .models import METADATA_FILE

        config = self.config
        path = state = None
        if self.main:
            path = _resolve_resume(config.resume)
            if path.resolve().parent != self.training_dir:
                raise InputError(f"cannot resume from {path}: a run resumes in place, and this state belongs to the "
                                 f"package beside {path.resolve().parent}, not to {config.out} (set out accordingly)")
            if not (config.out / METADATA_FILE).is_file():
                raise InputError(f"cannot resume from {path}: the best-epoch package {config.out} of that run is "
                                 "missing")
            state = _load_state(path)
        path, state = _broadcast((path, state), self.world)
        trained = state["config"]
        if (trained.get("metric"), trained.get("metric_mode")) != (config.metric, config.metric_mode):
            raise InputError(f"cannot resume from {path}: it picked the best epoch by {trained.get('metric')!r} "
                             f"({trained.get('metric_mode')}), this run by {config.metric!r} ({config.metric_mode})")
        try:
            self.module.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None and state.get("scheduler") is not None:
                self.scheduler.load_state_dict(state["scheduler"])
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ModelError(f"cannot resume from {path}: it does not match this network/optimizer: {exc}") from exc
        self.start_epoch = int(state["epoch"]) + 1
        self.best_value = state["best_value"]
        self.best_epoch = int(state["best_epoch"])
        self.best_metrics = dict(state["best_metrics"])
        self.history = list(state["history"])
        self.seconds_before = float(state["seconds"])
        rng = state["rng"]
        if len(rng) == self.world.world_size:
            _set_rng_state(rng[self.world.rank])
        else:  # other number of processes: the run goes on, reproducibly, but not bit-identical
            if self.main:
                logger.warning("resuming %d-process training with %d processes: random streams are re-seeded",
                               len(rng), self.world.world_size)
            seed_everything(self.config.seed + self.world.rank + 7919 * self.start_epoch)
        if self.main:
            _say(f"resuming from {path} at epoch {self.start_epoch} (best so far: epoch {self.best_epoch}, "
                 f"{config.metric}={self.best_value})")

    # ---------------------------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        config = self.config
        started = time.monotonic()
        deadline = started + config.max_minutes * 60 if config.max_minutes else None
        stopped_early = False
        if self.main:
            self.training_dir.mkdir(parents=True, exist_ok=True)
            _write_log(self.training_dir / TRAINING_LOG, self.history)

        for epoch in range(self.start_epoch, config.epochs + 1):
            if epoch > self.start_epoch and deadline is not None and self._budget_spent(deadline):
                stopped_early = True
                break
            epoch_started = time.monotonic()
            train_loss, partial = self._train_epoch(epoch, deadline)
            metrics = self._validate(epoch)
            if self.scheduler is not None:
                if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    self.scheduler.step(metrics[config.metric])
                else:
                    self.scheduler.step()
            value = metrics[config.metric]
            is_best = _is_better(value, self.best_value, config.metric_mode)
            seconds = time.monotonic() - epoch_started
            record = {
                "epoch": epoch,
                "train_loss": train_loss,
                "val": metrics,
                "lr": float(self.optimizer.param_groups[0]["lr"]),
                "seconds": round(seconds, 3),
                "elapsed_seconds": round(self.seconds_before + time.monotonic() - started, 3),
                "is_best": is_best,
                "partial": partial,
            }
            self.history.append(record)
            if is_best:
                self.best_value, self.best_epoch, self.best_metrics = value, epoch, metrics
                if self.main:
                    self._save_package(_state_dict_cpu(self.module), False, record["elapsed_seconds"])
            if self.main:
                _write_log(self.training_dir / TRAINING_LOG, self.history)
                plot_history(self.history, self.training_dir / TRAINING_CURVES, config.metric)
                self._print_epoch(record)
            self._save_state(epoch, record["elapsed_seconds"])
            if partial:
                stopped_early = True
                break

        total_seconds = self.seconds_before + time.monotonic() - started
        epochs_run = self.history[-1]["epoch"] if self.history else 0
        best_weights = None
        if self.main:
            # the package records the whole run (epochs run, early stop, time) even when the best epoch was early
            from .models import load_package

            best_weights = load_package(config.out).state_dict
            self._save_package(best_weights, stopped_early, total_seconds)
        # files exist on rank 0's machine only: the other ranks get the best weights through the process group
        self.module.load_state_dict(_broadcast(best_weights, self.world))
        return TrainResult(package=config.out.expanduser().resolve(), training_dir=self.training_dir,
                           best_epoch=self.best_epoch, best_metrics=dict(self.best_metrics), epochs_run=epochs_run,
                           stopped_early=stopped_early, seconds=round(total_seconds, 3),
                           history=copy.deepcopy(self.history), world_size=self.world.world_size,
                           device=str(self.device), amp=self.amp)

    def _budget_spent(self, deadline: float) -> bool:
        return _any_rank(time.monotonic() >= deadline, self.world, self.device)

    # ---------------------------------------------------------------------------------------------------------
    def _train_epoch(self, epoch: int, deadline: float | None) -> tuple[float, bool]:
        """One pass over this rank's share; returns (mean loss over all ranks, stopped by the time budget)."""
        config = self.config
        self.sampler.set_epoch(epoch)
        self.generator.manual_seed(_epoch_seed(config.seed, epoch, self.world.rank))
        self.network.train()
        total = torch.zeros(2, dtype=torch.float64, device=self.device)  # (sum of loss x samples, samples)
        show = config.progress if config.progress is not None else sys.stderr.isatty()
        steps = len(self.train_loader)
        partial = False
        from tqdm.auto import tqdm

        with tqdm(total=steps, desc=f"epoch {epoch}/{config.epochs}", disable=not (show and self.main),
                  leave=False, dynamic_ncols=True, file=sys.stderr) as bar:
            for step, batch in enumerate(self.train_loader, start=1):
                inputs, targets = _split_batch(batch)
                inputs, targets = _to_device(inputs, self.device), _to_device(targets, self.device)
                self.optimizer.zero_grad(set_to_none=True)
                with torch.autocast("cuda", dtype=torch.float16, enabled=self.amp):
                    loss = self.loss_fn(self.network(inputs), targets)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                n = _batch_length(targets) or _batch_length(inputs) or 1
                total[0] += loss.detach().double() * n
                total[1] += n
                bar.update(1)
                if step % config.log_every == 0 or step == steps:
                    running = float(total[0] / total[1])
                    bar.set_postfix(loss=f"{running:.4f}")
                    if self.main and bar.disable:
                        logger.info("epoch %d step %d/%d loss %.4f", epoch, step, steps, running)
                if deadline is not None and step < steps and self._budget_spent(deadline):
                    partial = True
                    break
        if self.world.distributed:
            dist.all_reduce(total)
        mean = float(total[0] / total[1])
        if not math.isfinite(mean):
            raise MedDLError(f"the training loss became {mean} in epoch {epoch}: lower the learning rate or check "
                             f"the inputs (the package and state of epoch {epoch - 1} are kept in {config.out})")
        return mean, partial

    def _validate(self, epoch: int) -> dict[str, float]:
        metrics = None
        if self.main:
            self.val_generator.manual_seed(self.config.seed)  # the same worker seeds at every validation
            self.module.eval()
            try:
                with torch.no_grad():
                    metrics = _clean_metrics(self.validate_fn(self.module, self.val_loader, self.device),
                                             self.config.metric)
            finally:
                self.module.train()
        metrics = _broadcast(metrics, self.world)
        return metrics

    # ---------------------------------------------------------------------------------------------------------
    def _training_metadata(self, stopped_early: bool, seconds: float) -> dict[str, Any]:
        config = self.config
        return {
            "best_epoch": self.best_epoch,
            "best_metrics": dict(self.best_metrics),
            "metric": config.metric,
            "metric_mode": config.metric_mode,
            "epochs_planned": config.epochs,
            "epochs_run": self.history[-1]["epoch"] if self.history else 0,
            "stopped_early": stopped_early,
            "max_minutes": config.max_minutes,
            "seconds": round(seconds, 3),
            "seed": config.seed,
            "batch_size": config.batch_size,
            "lr": config.lr,
            "world_size": self.world.world_size,
            "device": self.device.type,
            "amp": self.amp,
            "train_samples": self.n_train,
            "val_samples": self.n_val,
            "sample_weights": isinstance(self.sampler, WeightedDistributedSampler),
        }

    def _save_package(self, weights: dict[str, torch.Tensor], stopped_early: bool, seconds: float) -> None:
        """Write the model package (rank 0): ``weights`` plus the metadata with its ``training`` record."""
        from .models import save_package

        metadata = copy.deepcopy(self.metadata)
        metadata["training"] = self._training_metadata(stopped_early, seconds)
        save_package(self.config.out, weights, metadata)

    def _save_state(self, epoch: int, seconds: float) -> None:
        """Rank 0 writes the resumable state of the end of ``epoch`` (RNG states of every rank)."""
        rng = _rng_state()
        if self.world.distributed:
            gathered: list[Any] = [None] * self.world.world_size
            dist.all_gather_object(gathered, rng)
        else:
            gathered = [rng]
        if not self.main:
            return
        state = {
            "format": "meddl-training-state-1",
            "epoch": epoch,
            "model": _state_dict_cpu(self.module),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.amp else None,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "best_metrics": dict(self.best_metrics),
            "history": copy.deepcopy(self.history),
            "seconds": seconds,
            "rng": gathered,
            "config": self.config.to_dict(),
        }
        with atomic_path(self.training_dir / TRAINING_STATE) as tmp:
            torch.save(state, tmp)

    def _print_epoch(self, record: Mapping[str, Any]) -> None:
        metrics = " ".join(f"{k}={v:.4f}" for k, v in record["val"].items())
        line = (f"epoch {record['epoch']}/{self.config.epochs}: train_loss={record['train_loss']:.4f} "
                f"val {metrics} lr={record['lr']:.3g} {record['seconds']:.1f}s"
                + (" *best*" if record["is_best"] else "") + (" (time budget reached)" if record["partial"] else ""))
        _say(line)
