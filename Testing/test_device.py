"""Device selection: CPU by default without a GPU, CUDA when present, force-CPU, clear errors, reported once."""

from __future__ import annotations

import logging

import pytest
import torch

from MedDLLib import device as device_mod
from MedDLLib.device import describe_device, select_device
from MedDLLib.errors import InputError


@pytest.fixture(autouse=True)
def _fresh_announcements(monkeypatch):
    monkeypatch.setattr(device_mod, "_ANNOUNCED", set())


def _fake_gpus(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_cpu_when_no_gpu(monkeypatch, capsys):
    _fake_gpus(monkeypatch, 0)
    assert select_device() == torch.device("cpu")
    assert select_device("auto") == torch.device("cpu")
    err = capsys.readouterr().err
    assert "cpu" in err and "no CUDA GPU found" in err


def test_cuda_when_present(monkeypatch):
    _fake_gpus(monkeypatch, 2)
    assert select_device() == torch.device("cuda", 0)
    assert select_device("cuda") == torch.device("cuda", 0)
    assert select_device("CUDA:1") == torch.device("cuda", 1)


def test_force_cpu_overrides_gpu_and_request(monkeypatch, capsys):
    _fake_gpus(monkeypatch, 1)
    assert select_device(force_cpu=True) == torch.device("cpu")
    assert select_device("cuda", force_cpu=True) == torch.device("cpu")
    assert select_device("cpu") == torch.device("cpu")
    err = capsys.readouterr().err
    assert "CPU forced" in err and "overrides the requested 'cuda'" in err


def test_cuda_requested_without_gpu_is_a_clear_error(monkeypatch):
    _fake_gpus(monkeypatch, 0)
    with pytest.raises(InputError, match=r"'cuda' requested but no CUDA GPU can be used.*--device cpu"):
        select_device("cuda")


def test_cuda_index_out_of_range(monkeypatch):
    _fake_gpus(monkeypatch, 1)
    with pytest.raises(InputError, match=r"has 1 CUDA GPU"):
        select_device("cuda:3")


@pytest.mark.parametrize("bad", ["gpu", "mps", "cuda:x", "cpu:0", ""])
def test_unknown_device_string(bad):
    with pytest.raises(InputError, match="unknown device"):
        select_device(bad)


def test_choice_reported_once_per_process(monkeypatch, capsys):
    _fake_gpus(monkeypatch, 0)
    for _ in range(3):
        select_device()
    err = capsys.readouterr().err
    assert err.count("MedDL device:") == 1
    select_device(force_cpu=True)  # a different choice (reason) is reported, once
    select_device(force_cpu=True)
    assert capsys.readouterr().err.count("MedDL device:") == 1


def test_reported_through_logging_when_configured(monkeypatch, caplog, capsys):
    _fake_gpus(monkeypatch, 0)
    with caplog.at_level(logging.INFO, logger="MedDLLib.device"):
        select_device()
    assert any("MedDL device: cpu" in r.getMessage() for r in caplog.records)
    assert "MedDL device" not in capsys.readouterr().err


def test_describe_device():
    assert describe_device("cpu") == f"cpu ({torch.get_num_threads()} threads)"
    assert describe_device(torch.device("cpu")).startswith("cpu (")
    if torch.cuda.is_available():  # on a GPU machine the name and memory are shown
        assert "GiB" in describe_device("cuda:0")
    else:  # without a driver the description still works
        assert describe_device("cuda:0") == "cuda:0"


def test_inference_device_is_the_cpu_without_importing_torch():
    """``meddl infer`` on the CPU (forced, requested, or no GPU driver) does not import torch to say so; the
    thread count it reports is torch's own."""
    import subprocess
    import sys

    code = ("import sys; from MedDLLib import device as d; d.gpu_driver_present = lambda: False; "
            "chosen = [d.select_inference_device(r, f) for r, f in ((None, True), ('cpu', False), ('auto', False), "
            "('cuda', True))]; threads = d.cpu_threads(); assert 'torch' not in sys.modules, 'torch imported'; "
            "import torch; print(chosen, threads, torch.get_num_threads())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    chosen, threads, torch_threads = done.stdout.rsplit("]", 1)[0] + "]", *done.stdout.rsplit("]", 1)[1].split()
    assert chosen == "['cpu', 'cpu', 'cpu', 'cpu']" and threads == torch_threads
    assert "MedDL device: cpu" in done.stderr and "no GPU driver" in done.stderr


def test_inference_device_asks_torch_where_a_gpu_may_be(monkeypatch):
    from MedDLLib.device import select_inference_device

    _fake_gpus(monkeypatch, 1)
    monkeypatch.setattr(device_mod, "gpu_driver_present", lambda: True)
    assert select_inference_device() == torch.device("cuda", 0)
    assert select_inference_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(InputError, match="unknown device"):
        select_inference_device("tpu")


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_setaffinity"), reason="CPU affinity is Linux's")
def test_physical_cores_follow_the_cpus_the_process_may_run_on():
    """``/proc/cpuinfo`` is read once per set of allowed CPUs: a process narrowed to one CPU (taskset, a batch
    scheduler) is told 1, and widened again, the count it had."""
    import os
    import subprocess
    import sys

    code = ("import os; from MedDLLib.device import physical_cores; cpus = os.sched_getaffinity(0); "
            "n = physical_cores(); os.sched_setaffinity(0, {min(cpus)}); one = physical_cores(); "
            "os.sched_setaffinity(0, cpus); print(n, one, physical_cores())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ)
    assert done.returncode == 0, done.stderr
    n, one, again = map(int, done.stdout.split())
    assert one == 1 and again == n >= 1
