"""Generic streaming datasets and samplers for :func:`MedDLLib.training.train`.

Samples are read from disk one at a time when the :class:`~torch.utils.data.DataLoader` asks for them, so
memory stays bounded by ``batch_size x num_workers`` samples whatever the size of the dataset. What a sample
*is* (which files, which preprocessing) belongs to the task: the task passes a list of items (paths, rows of a
table, tuples) and a function that turns one item into one sample. By convention a sample is a pair
``(input, target)``: ``input`` a tensor or array of shape ``(C, H, W)`` or ``(C, D, H, W)``, ``target`` a tensor,
array, number, or a tuple of those (e.g. ``(time_days, event)`` for survival).

Augmentation is the ``transform`` of the *training* dataset only; the validation dataset is built from the
same ``load_fn`` without it::

    train_ds = FileDataset(train_items, load_case, transform=augment)
    val_ds = FileDataset(val_items, load_case)

For oversampling (e.g. tumour slices) pass per-sample weights to ``train(..., sample_weights=...)``;
``sklearn.utils.class_weight.compute_sample_weight("balanced", labels)`` gives class-balanced weights.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Generic, Iterator, Sequence, TypeVar

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from .errors import InputError, MedDLError

ItemT = TypeVar("ItemT")

__all__ = ["FileDataset", "WeightedDistributedSampler"]


class FileDataset(Dataset, Generic[ItemT]):
    """Samples loaded lazily from disk: ``dataset[i] == transform(load_fn(items[i]))``.

    Args:
        items: one entry per sample (a path, a tuple of paths, a table row...); kept as given, never loaded here.
        load_fn: ``item -> sample``, reads one sample from disk. Errors other than
            :class:`~MedDLLib.errors.MedDLError` are re-raised as :class:`~MedDLLib.errors.InputError` naming
            the sample index and item.
        transform: optional ``sample -> sample`` applied after loading (the augmentation hook: give it to the
            training dataset only).

    With ``num_workers > 0`` the functions run in worker processes: use module-level functions or
    :func:`functools.partial` objects, not lambdas, so they can be pickled.
    """

    def __init__(
        self,
        items: Sequence[ItemT],
        load_fn: Callable[[ItemT], Any],
        transform: Callable[[Any], Any] | None = None,
    ) -> None:
        if not callable(load_fn):
            raise TypeError(f"load_fn must be callable, got {type(load_fn).__name__}")
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable or None, got {type(transform).__name__}")
        self.items = list(items)
        self.load_fn = load_fn
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        item = self.items[index]
        try:
            sample = self.load_fn(item)
        except MedDLError:
            raise
        except Exception as exc:  # a broken file must name itself, not surface as a torch worker traceback
            raise InputError(f"cannot load sample {index} ({item!r}): {type(exc).__name__}: {exc}") from exc
        return sample if self.transform is None else self.transform(sample)


class WeightedDistributedSampler(DistributedSampler):
    """Draws samples with replacement in proportion to ``weights``, split across distributed ranks.

    The weighted counterpart of :class:`torch.utils.data.DistributedSampler` (and of
    :class:`torch.utils.data.WeightedRandomSampler`, which knows nothing about ranks). Every epoch each rank
    draws the same ``ceil(N / num_replicas) * num_replicas`` indices from a generator seeded with
    ``seed + epoch`` and keeps every ``num_replicas``-th one starting at its rank, so ranks see disjoint
    positions of one weighted draw and a run is reproducible. Call :meth:`set_epoch` before each epoch.

    Args:
        dataset: the dataset (only its length is used).
        weights: ``(N,)`` non-negative sampling weights, one per sample, not all zero.
        num_replicas: number of ranks (1 without distributed training).
        rank: this process's rank in ``[0, num_replicas)``.
        seed: base seed of the draw.
    """

    def __init__(
        self,
        dataset: Dataset,
        weights: Sequence[float] | np.ndarray | torch.Tensor,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        w = torch.as_tensor(np.asarray(weights, dtype=np.float64))
        if w.ndim != 1 or w.numel() != len(dataset):  # type: ignore[arg-type]
            raise InputError(
                f"sample weights must be one number per sample: got shape {tuple(w.shape)} "
                f"for a dataset of {len(dataset)} samples"  # type: ignore[arg-type]
            )
        if not torch.isfinite(w).all() or (w < 0).any() or float(w.sum()) <= 0:
            raise InputError("sample weights must be finite, non-negative and not all zero")
        self.weights = w
        self.total_size = math.ceil(len(dataset) / num_replicas) * num_replicas  # type: ignore[arg-type]
        self.num_samples = self.total_size // num_replicas

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        draw = torch.multinomial(self.weights, self.total_size, replacement=True, generator=generator).tolist()
        return iter(draw[self.rank : self.total_size : self.num_replicas])
