"""A tiny, learnable on-disk problem for the training-loop tests (and the 2-process torchrun test).

Each sample is a ``.npy`` file holding a ``(1, 16, 16)`` float32 image of Gaussian noise; label 1 images also
hold a bright Gaussian blob (amplitude 3, sigma 1.5 px) at a random position. The label lives in the file name
(``<index>_<label>.npy``), so loading needs nothing but the path.

Run under torchrun (what ``test_training.py`` does)::

    python -m torch.distributed.run --standalone --nproc_per_node 2 Testing/training_toy.py \
        --data DATA --out PACKAGE --epochs 6
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from MedDLLib.datasets import FileDataset
from MedDLLib.models import register_network
from MedDLLib.training import TrainConfig, predict_loader, train

SIZE = 16


def write_blob_dataset(folder: Path, n: int, seed: int) -> list[Path]:
    """Write ``n`` samples (half with a blob) into ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    paths = []
    for index in range(n):
        label = index % 2
        image = rng.normal(0.0, 1.0, size=(SIZE, SIZE))
        if label:
            cy, cx = rng.uniform(3, SIZE - 3, size=2)
            image += 3.0 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 1.5**2))
        path = folder / f"{index:04d}_{label}.npy"
        np.save(path, image[None].astype(np.float32))
        paths.append(path)
    return paths


def load_sample(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """``path -> (image (1, 16, 16) float32, label () float32)``."""
    label = float(Path(path).stem.split("_")[1])
    return torch.from_numpy(np.load(path)), torch.tensor(label)


def slow_load_sample(path: Path, seconds: float) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`load_sample` from a slow disk: sleeps ``seconds`` first."""
    time.sleep(seconds)
    return load_sample(path)


def random_flip(sample: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Augmentation drawing from NumPy's global generator (so worker/resume seeding matters)."""
    image, label = sample
    if np.random.rand() < 0.5:
        image = torch.flip(image, dims=[-1])
    return image, label


class TinyNet(nn.Module):
    """``(B, 1, 16, 16) -> (B,)`` logits: two convolutions, global max pooling, a linear layer."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                                      nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))[:, 0]


NETWORK_NAME = "meddl-test.TinyNet"
register_network(NETWORK_NAME, TinyNet)


def package_metadata(dropout: float = 0.0, n_studies: int = 48) -> dict:
    """Complete package metadata for a TinyNet (what :func:`MedDLLib.models.save_package` asks for)."""
    return {
        "task": "toy", "version": "0.0.1", "recipe": "seed",
        "network": {"name": NETWORK_NAME, "args": {"dropout": dropout}},
        "input": {"channels": ["image"], "size": [SIZE, SIZE]},
        "output": {"labels": ["blob"]},
        "training_data": {"kind": "synthetic", "n_studies": n_studies, "description": "noise, half with a blob"},
        "metrics": {},
    }


def bce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return nn.functional.binary_cross_entropy_with_logits(logits, labels.float())


def accuracy(network: nn.Module, loader, device: torch.device) -> dict[str, float]:
    """validate_fn: accuracy at logit 0 and the mean validation loss."""
    logits, labels = predict_loader(network, loader, device)
    return {"accuracy": float(((logits > 0).float() == labels).float().mean()),
            "loss": float(bce_loss(logits, labels))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="folder with train/ and val/ sample files")
    parser.add_argument("--out", type=Path, required=True, help="model package folder")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-minutes", type=float, default=None)
    parser.add_argument("--resume", type=Path, default=None)
    parser.add_argument("--load-seconds", type=float, default=0.0, help="sleep per sample loaded (slow disk)")
    args = parser.parse_args(argv)
    load = partial(slow_load_sample, seconds=args.load_seconds) if args.load_seconds else load_sample
    train_set = FileDataset(sorted((args.data / "train").glob("*.npy")), load, transform=random_flip)
    val_set = FileDataset(sorted((args.data / "val").glob("*.npy")), load_sample)
    torch.manual_seed(args.seed)
    config = TrainConfig(out=args.out, epochs=args.epochs, batch_size=8, lr=1e-2, seed=args.seed, device="cpu",
                         metric="accuracy", metric_mode="max", num_workers=1, max_minutes=args.max_minutes,
                         resume=args.resume)
    result = train(TinyNet(), train_set, val_set, bce_loss, config, validate_fn=accuracy,
                   metadata=package_metadata(n_studies=len(train_set)))
    print(f"rank done: world_size={result.world_size} best_epoch={result.best_epoch} "
          f"epochs_run={result.epochs_run} stopped_early={result.stopped_early} best={result.best_metrics}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
