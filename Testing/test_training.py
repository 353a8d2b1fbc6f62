"""The shared training loop (MedDLLib.training) and streaming datasets (MedDLLib.datasets).

Every run trains ``training_toy.TinyNet`` on a tiny on-disk problem (noise images, label 1 = a planted blob).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from MedDLLib.datasets import FileDataset, WeightedDistributedSampler
from MedDLLib.errors import InputError, MedDLError, ModelError
from MedDLLib.models import load_package
from MedDLLib.training import (
    TRAINING_CURVES,
    TRAINING_LOG,
    TRAINING_STATE,
    TrainConfig,
    WorldInfo,
    is_main_process,
    predict_loader,
    train,
    training_dir,
    world_info,
)

import training_toy as toy

TESTING = Path(__file__).resolve().parent
METADATA = toy.package_metadata()


@pytest.fixture(scope="module")
def blob_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("blobs")
    toy.write_blob_dataset(root / "train", 48, seed=1)
    toy.write_blob_dataset(root / "val", 24, seed=2)
    return root


def datasets(root: Path, augment=None, load=toy.load_sample) -> tuple[FileDataset, FileDataset]:
    return (FileDataset(sorted((root / "train").glob("*.npy")), load, transform=augment),
            FileDataset(sorted((root / "val").glob("*.npy")), load))


def tiny_net(seed: int = 0, dropout: float = 0.0) -> toy.TinyNet:
    torch.manual_seed(seed)
    return toy.TinyNet(dropout)


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


class ScriptedMetric:
    """validate_fn returning ``score_of(epoch)`` and keeping a copy of the weights validated at each epoch."""

    def __init__(self, score_of, interrupt_at: int | None = None) -> None:
        self.score_of, self.interrupt_at = score_of, interrupt_at
        self.epoch = 0
        self.snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def __call__(self, network, loader, device) -> dict[str, float]:
        self.epoch += 1
        if self.epoch == self.interrupt_at:
            raise KeyboardInterrupt("simulated crash")
        assert not network.training and not torch.is_grad_enabled()
        self.snapshots[self.epoch] = {k: v.detach().clone() for k, v in network.state_dict().items()}
        return {"score": self.score_of(self.epoch)}


def slow_load(path: Path, seconds: float):
    time.sleep(seconds)
    return toy.load_sample(path)


# ------------------------------------------------------------------------------------------------- datasets


def test_file_dataset_loads_one_sample_at_a_time_and_names_bad_files(tmp_path):
    calls = []

    def load(path):
        calls.append(path)
        return toy.load_sample(path)

    paths = toy.write_blob_dataset(tmp_path / "d", 4, seed=0)
    dataset = FileDataset(paths, load, transform=lambda s: (s[0] * 0 + 7, s[1]))
    assert len(dataset) == 4 and calls == []  # nothing read up front
    image, label = dataset[3]
    assert calls == [paths[3]] and torch.all(image == 7) and float(label) == 1.0

    paths[1].write_bytes(b"not a npy file")
    with pytest.raises(InputError, match=r"sample 1 .*0001_1\.npy"):
        FileDataset(paths, toy.load_sample)[1]


def test_weighted_distributed_sampler_splits_one_weighted_draw_between_ranks():
    dataset = list(range(9))
    weights = [0, 0, 1, 1, 1, 0, 0, 0, 5]
    ranks = [WeightedDistributedSampler(dataset, weights, num_replicas=2, rank=r, seed=3) for r in (0, 1)]
    for sampler in ranks:
        sampler.set_epoch(4)
    draws = [list(s) for s in ranks]
    assert [len(d) for d in draws] == [5, 5] and all(len(s) == 5 for s in ranks)
    assert set(draws[0] + draws[1]) <= {2, 3, 4, 8}  # zero-weight samples are never drawn
    assert draws == [list(s) for s in ranks]  # same epoch, same draw
    ranks[0].set_epoch(5)
    assert list(ranks[0]) != draws[0]

    counts = np.bincount(list(WeightedDistributedSampler(list(range(4000)), [1.0] * 2000 + [4.0] * 2000)),
                         minlength=4000)
    assert 3.4 < counts[2000:].sum() / counts[:2000].sum() < 4.7  # oversampled 4:1

    with pytest.raises(InputError, match="one number per sample"):
        WeightedDistributedSampler(dataset, [1.0, 2.0])
    with pytest.raises(InputError, match="non-negative"):
        WeightedDistributedSampler(dataset, [-1.0] + [1.0] * 8)


# ------------------------------------------------------------------------------------------------- best epoch


@pytest.mark.parametrize("mode, best", [("max", 2), ("min", 3)])
def test_package_holds_the_best_epoch_by_the_metric(blob_data, tmp_path, mode, best):
    scores = [0.5, 0.9, 0.2, 0.7]
    validate = ScriptedMetric(lambda e: scores[e - 1])
    network = tiny_net()
    config = TrainConfig(out=tmp_path / "pkg", epochs=4, batch_size=8, lr=1e-2, device="cpu", metric="score",
                         metric_mode=mode)
    result = train(network, *datasets(blob_data), toy.bce_loss, config, validate_fn=validate, metadata=METADATA)

    assert result.best_epoch == best and result.best_metrics == {"score": scores[best - 1]}
    assert result.epochs_run == 4 and not result.stopped_early and result.world_size == 1
    package = load_package(result.package)
    assert same_weights(package.state_dict, validate.snapshots[best])
    assert not same_weights(package.state_dict, validate.snapshots[4])  # the last epoch is not the best one
    assert same_weights(network.state_dict(), validate.snapshots[best])  # network returned with the best weights
    training = package.metadata["training"]
    assert training["best_epoch"] == best and training["best_metrics"] == {"score": scores[best - 1]}
    assert (training["epochs_run"], training["seed"], training["world_size"]) == (4, 0, 1)
    assert training["metric"] == "score" and training["metric_mode"] == mode
    assert package.metadata["task"] == "toy"
    assert [r["is_best"] for r in result.history] == [
        e == 1 or (scores[e - 1] > max(scores[: e - 1]) if mode == "max" else scores[e - 1] < min(scores[: e - 1]))
        for e in range(1, 5)
    ]


def test_default_validation_is_the_mean_loss_and_the_log_and_curves_are_written(blob_data, tmp_path):
    config = TrainConfig(out=tmp_path / "pkg", epochs=3, batch_size=8, lr=1e-2, device="cpu")
    result = train(tiny_net(), *datasets(blob_data), toy.bce_loss, config, metadata=METADATA,
                   scheduler_factory=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5))
    folder = tmp_path / "pkg.training"
    assert result.training_dir == folder == training_dir(tmp_path / "pkg")
    lines = [json.loads(line) for line in (folder / TRAINING_LOG).read_text().splitlines()]
    assert lines == result.history and [r["epoch"] for r in lines] == [1, 2, 3]
    for record in lines:
        assert {"epoch", "train_loss", "val", "lr", "seconds", "elapsed_seconds", "is_best"} <= record.keys()
        assert set(record["val"]) == {"loss"} and record["seconds"] >= 0
    assert [r["lr"] for r in lines] == pytest.approx([5e-3, 2.5e-3, 1.25e-3])  # after each epoch's scheduler step
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]  # it learns
    best = min(lines, key=lambda r: r["val"]["loss"])
    assert result.best_epoch == best["epoch"] and config.metric_mode == "min"

    # the default metric is the validation loss: recompute it with the packaged weights
    network = toy.TinyNet()
    network.load_state_dict(load_package(result.package).state_dict)
    logits, labels = predict_loader(network, torch.utils.data.DataLoader(datasets(blob_data)[1], batch_size=5),
                                    torch.device("cpu"))
    assert logits.shape == (24,) and float(toy.bce_loss(logits, labels)) == pytest.approx(best["val"]["loss"], rel=1e-5)

    import matplotlib.image

    png = folder / TRAINING_CURVES
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(png).shape
    assert height > 100 and width > 100
    assert (folder / TRAINING_STATE).is_file()


# ------------------------------------------------------------------------------------------------- time budget


def test_time_budget_stops_training_and_keeps_the_best_epoch(blob_data, tmp_path):
    # every epoch sleeps >= 48 x 5 ms, so 1000 epochs cannot fit in a 1.5 s budget
    validate = ScriptedMetric(lambda e: -abs(e - 2))  # best at epoch 2
    train_set, val_set = datasets(blob_data, load=partial(slow_load, seconds=0.005))
    config = TrainConfig(out=tmp_path / "pkg", epochs=1000, max_minutes=1.5 / 60, batch_size=8, device="cpu",
                         metric="score", metric_mode="max")
    result = train(tiny_net(), train_set, val_set, toy.bce_loss, config, validate_fn=validate, metadata=METADATA)

    assert result.stopped_early and 1 <= result.epochs_run < 1000 and len(result.history) == result.epochs_run
    scores = [r["val"]["score"] for r in result.history]
    assert result.best_epoch == 1 + int(np.argmax(scores))
    package = load_package(result.package)
    assert same_weights(package.state_dict, validate.snapshots[result.best_epoch])
    assert package.metadata["training"]["stopped_early"] is True
    assert package.metadata["training"]["epochs_run"] == result.epochs_run


def test_time_budget_inside_the_first_epoch_still_leaves_a_package(blob_data, tmp_path):
    # one epoch needs >= 48 x 20 ms; the budget is 0.3 s: training stops mid-epoch and validates what it has
    train_set, val_set = datasets(blob_data, load=partial(slow_load, seconds=0.02))
    config = TrainConfig(out=tmp_path / "pkg", epochs=5, max_minutes=0.3 / 60, batch_size=4, device="cpu")
    result = train(tiny_net(), train_set, val_set, toy.bce_loss, config, metadata=METADATA)
    assert result.stopped_early and result.epochs_run == 1 and result.history[0]["partial"] is True
    assert load_package(result.package).metadata["training"]["best_epoch"] == 1


# ------------------------------------------------------------------------------------------------- resume


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_after_a_crash_gives_the_same_result_as_an_uninterrupted_run(blob_data, tmp_path, num_workers):
    """Dropout (torch RNG), a NumPy-random augmentation, oversampling and a scheduler all continue exactly."""

    def run(out: Path, validate: ScriptedMetric, resume: Path | None = None, init_seed: int = 0):
        config = TrainConfig(out=out, epochs=4, batch_size=8, lr=1e-2, seed=5, device="cpu", metric="score",
                             metric_mode="max", num_workers=num_workers, resume=resume)
        weights = np.where(np.arange(48) % 2, 3.0, 1.0)
        return train(tiny_net(init_seed, dropout=0.3), *datasets(blob_data, augment=toy.random_flip),
                     toy.bce_loss, config, validate_fn=validate, metadata=toy.package_metadata(0.3),
                     sample_weights=weights,
                     scheduler_factory=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.3))

    score = [0.1, 0.2, 0.4, 0.3]  # best epoch 3: reached only after the resume
    straight = run(tmp_path / "straight", ScriptedMetric(lambda e: score[e - 1]))

    crashed = ScriptedMetric(lambda e: score[e - 1], interrupt_at=3)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "resumed", crashed)
    log = (training_dir(tmp_path / "resumed") / TRAINING_LOG).read_text().splitlines()
    assert len(log) == 2  # two epochs finished before the crash

    later = ScriptedMetric(lambda e: score[e + 1])  # called for epochs 3 and 4 only
    resumed = run(tmp_path / "resumed", later, resume=tmp_path / "resumed", init_seed=99)

    assert resumed.best_epoch == straight.best_epoch == 3 and resumed.epochs_run == 4
    a, b = load_package(straight.package), load_package(resumed.package)
    assert same_weights(a.state_dict, b.state_dict)
    state = {k: torch.load(training_dir(p) / TRAINING_STATE, weights_only=True)
             for k, p in (("a", straight.package), ("b", resumed.package))}
    assert same_weights(state["a"]["model"], state["b"]["model"])  # the last epoch too
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("seconds", "elapsed_seconds")} for r in h]  # noqa
    assert strip(straight.history) == strip(resumed.history)
    assert [r["lr"] for r in resumed.history] == pytest.approx([1e-2, 3e-3, 3e-3, 9e-4])


def test_resume_refuses_another_metric_another_package_or_a_missing_state(blob_data, tmp_path):
    config = TrainConfig(out=tmp_path / "pkg", epochs=1, device="cpu")
    train(tiny_net(), *datasets(blob_data), toy.bce_loss, config, metadata=METADATA)

    def resume(**changes):
        cfg = TrainConfig(**{**dict(out=tmp_path / "pkg", epochs=2, device="cpu", resume=tmp_path / "pkg"), **changes})
        return train(tiny_net(), *datasets(blob_data), toy.bce_loss, cfg, validate_fn=ScriptedMetric(float),
                     metadata=METADATA)

    with pytest.raises(InputError, match="by 'loss' \\(min\\), this run by 'score' \\(max\\)"):
        resume(metric="score", metric_mode="max")
    with pytest.raises(InputError, match="resumes in place"):
        resume(out=tmp_path / "elsewhere")
    with pytest.raises(InputError, match="cannot resume: no training_state.pt at .*nowhere"):
        resume(resume=tmp_path / "nowhere")
    (training_dir(tmp_path / "pkg") / TRAINING_STATE).write_bytes(b"garbage")
    with pytest.raises(ModelError, match="cannot read training state"):
        resume()


def test_nan_metrics_never_win_and_are_logged_as_null(blob_data, tmp_path):
    scores = [float("nan"), 0.3, float("nan"), 0.2]
    config = TrainConfig(out=tmp_path / "pkg", epochs=4, device="cpu", metric="score", metric_mode="max")
    result = train(tiny_net(), *datasets(blob_data), toy.bce_loss, config, metadata=METADATA,
                   validate_fn=ScriptedMetric(lambda e: scores[e - 1]))
    assert result.best_epoch == 2
    lines = (result.training_dir / TRAINING_LOG).read_text().splitlines()
    strict = [json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}")) for line in lines]
    assert [r["val"]["score"] for r in strict] == [None, 0.3, None, 0.2]
    assert [r["is_best"] for r in strict] == [True, True, False, False]


# ------------------------------------------------------------------------------------------------- devices, errors


def test_amp_is_silently_off_on_cpu(blob_data, tmp_path):
    config = TrainConfig(out=tmp_path / "pkg", epochs=1, device="cpu", amp=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(tiny_net(), *datasets(blob_data), toy.bce_loss, config, metadata=METADATA)
    assert result.amp is False and result.device == "cpu"
    assert load_package(result.package).metadata["training"]["amp"] is False
    noisy = [str(w.message) for w in caught if any(s in str(w.message).lower() for s in ("amp", "autocast", "cuda",
                                                                                            "gradscaler"))]
    assert noisy == []


def test_bad_inputs_give_clear_errors(blob_data, tmp_path):
    train_set, val_set = datasets(blob_data)
    cfg = TrainConfig(out=tmp_path / "pkg", epochs=1, device="cpu", metric="auroc", metric_mode="max")
    with pytest.raises(InputError, match="training dataset is empty"):
        train(tiny_net(), FileDataset([], toy.load_sample), val_set, toy.bce_loss, cfg, metadata=METADATA)
    with pytest.raises(InputError, match="no metric 'auroc'.*accuracy, loss"):
        train(tiny_net(), train_set, val_set, toy.bce_loss, cfg, validate_fn=toy.accuracy, metadata=METADATA)
    with pytest.raises(InputError, match="pair"):
        train(tiny_net(), FileDataset(train_set.items, lambda p: toy.load_sample(p)[0]), val_set, toy.bce_loss, cfg,
              metadata=METADATA)
    with pytest.raises(ModelError, match="missing key 'version'"):  # before any training
        train(tiny_net(), train_set, val_set, toy.bce_loss, TrainConfig(out=tmp_path / "early"),
              metadata={"task": "toy"})
    (tmp_path / "not-a-package").mkdir()
    (tmp_path / "not-a-package" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not-a-package: it exists and is not a model package"):
        train(tiny_net(), train_set, val_set, toy.bce_loss, TrainConfig(out=tmp_path / "not-a-package"),
              metadata=METADATA)
    assert not (tmp_path / "early").exists() and not training_dir(tmp_path / "early").exists()
    with pytest.raises(InputError, match="metric_mode"):
        TrainConfig(out=tmp_path, metric_mode="maximum")
    with pytest.raises(InputError, match="epochs"):
        TrainConfig(out=tmp_path, epochs=0)


def test_a_diverging_loss_stops_with_a_clear_error_and_keeps_the_last_good_package(blob_data, tmp_path):
    epochs_seen = []

    def loss_fn(logits, labels):
        loss = toy.bce_loss(logits, labels)
        return loss * float("nan") if len(epochs_seen) >= 1 else loss

    def validate(network, loader, device):
        epochs_seen.append(1)
        return {"loss": 1.0}

    config = TrainConfig(out=tmp_path / "pkg", epochs=3, device="cpu")
    with pytest.raises(MedDLError, match="became nan in epoch 2"):
        train(tiny_net(), *datasets(blob_data), loss_fn, config, validate_fn=validate, metadata=METADATA)
    assert load_package(tmp_path / "pkg").metadata["training"]["best_epoch"] == 1


def test_world_info_reads_torchrun_variables(monkeypatch, blob_data, tmp_path):
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert world_info() == WorldInfo(0, 0, 1) and is_main_process()
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert world_info() == WorldInfo(3, 1, 4) and world_info().distributed and not is_main_process()
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(InputError, match="MASTER_ADDR.*torchrun"):  # not a hang waiting for peers
        train(tiny_net(), *datasets(blob_data), toy.bce_loss, TrainConfig(out=tmp_path / "p", device="cpu"),
              metadata=METADATA)
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(InputError, match="WORLD_SIZE='two'"):
        world_info()


# ------------------------------------------------------------------------------------------------- torchrun


def torchrun_toy(data: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --standalone --nproc_per_node 2 training_toy.py ...`` (2 CPU processes)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(TESTING / "training_toy.py"), "--data", str(data), "--out", str(out), *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_torchrun_with_two_cpu_processes_trains_a_valid_package(blob_data, tmp_path):
    out = tmp_path / "pkg"
    done = torchrun_toy(blob_data, out, "--epochs", "5")
    assert done.stderr.count("rank done: world_size=2") == 2  # both ranks finished and agree on the world
    assert done.stderr.count("epoch 5/5") == 1  # only rank 0 reports

    package = load_package(out)  # verifies the sha256 of the weights
    training = package.metadata["training"]
    assert training["world_size"] == 2 and training["epochs_run"] == 5 and training["device"] == "cpu"
    assert training["best_metrics"]["accuracy"] >= 0.9
    log = [json.loads(line) for line in (training_dir(out) / TRAINING_LOG).read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4, 5]

    # independent check of what was learned: the packaged weights separate blob from no blob on the val set
    network = toy.TinyNet()
    network.load_state_dict(package.state_dict)
    untrained = toy.accuracy(tiny_net(123), torch.utils.data.DataLoader(datasets(blob_data)[1], batch_size=8),
                             torch.device("cpu"))
    learned = toy.accuracy(network, torch.utils.data.DataLoader(datasets(blob_data)[1], batch_size=8),
                           torch.device("cpu"))
    assert learned["accuracy"] >= 0.9 and learned["accuracy"] == pytest.approx(training["best_metrics"]["accuracy"])
    assert untrained["accuracy"] < 0.9

    # stopped after 3 epochs and resumed to 5 with the same command: identical to the uninterrupted run
    # (the resumable state holds the random-number state of both ranks)
    torchrun_toy(blob_data, tmp_path / "split", "--epochs", "3")
    torchrun_toy(blob_data, tmp_path / "split", "--epochs", "5", "--resume", str(tmp_path / "split"))
    straight = torch.load(training_dir(out) / TRAINING_STATE, weights_only=True)
    resumed = torch.load(training_dir(tmp_path / "split") / TRAINING_STATE, weights_only=True)
    assert len(resumed["rng"]) == 2 and same_weights(straight["model"], resumed["model"])
    assert [r["train_loss"] for r in straight["history"]] == [r["train_loss"] for r in resumed["history"]]
