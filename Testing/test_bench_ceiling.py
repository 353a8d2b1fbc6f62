"""The machine ceiling and the FLOP count of a forward: counts checked by hand, rows carry the share (no timing
asserted). OpenVINO is never imported here (the suite's process stays torch-only; see test_runtime.py)."""

from __future__ import annotations

import statistics

import pytest
import torch

from MedDLLib import bench


def _one_conv() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Conv2d(3, 8, 3, padding=1, bias=False).eval()


# Conv2d(3 -> 8, 3x3, padding 1) on (2, 3, 16, 16): 2 * 16 * 16 * 8 outputs, each 3 * 3 * 3 multiply-adds,
# a multiply-add = 2 FLOPs
ONE_CONV_FLOPS = 2 * (2 * 16 * 16 * 8) * (3 * 3 * 3)


def _fake_ceiling(threads: int) -> dict:
    return {"threads": threads, "fp32_gflops": 100.0, "fp32_from": "torch fp32 matmul", "bf16_gflops": 400.0,
            "bf16_from": "torch bf16 matmul", "measurements": {}}


def test_forward_flops_of_one_conv_layer_is_counted_by_hand():
    x = torch.rand(2, 3, 16, 16)
    assert bench.forward_flops(_one_conv(), x) == ONE_CONV_FLOPS == 221184
    assert bench.forward_flops(_one_conv(), x.numpy()) == ONE_CONV_FLOPS  # a numpy input too
    # stride 2 in 3D: output 4 x 4 x 4 voxels x 4 channels, each 2 * 27 multiply-adds
    conv3d = torch.nn.Conv3d(2, 4, 3, stride=2, padding=1, bias=False)
    assert bench.forward_flops(conv3d, torch.rand(1, 2, 8, 8, 8)) == 2 * (4 * 4 * 4 * 4) * (2 * 27)
    # a matrix product: (5, 10) @ (10, 4)
    assert bench.forward_flops(torch.nn.Linear(10, 4, bias=False), torch.rand(5, 10)) == 2 * 5 * 10 * 4


def test_forward_flops_leaves_a_training_network_in_training_mode():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8)).train()
    before = net[1].running_mean.clone()
    assert bench.forward_flops(net, torch.rand(2, 3, 16, 16)) == ONE_CONV_FLOPS
    assert net.training and torch.equal(net[1].running_mean, before)  # counted in eval mode, statistics untouched


def test_runtime_row_carries_flops_and_the_share_of_the_matching_ceiling():
    x = torch.rand(8, 3, 64, 64).numpy()  # 4x the images, 16x the pixels of the hand count: a forward of ~ms
    flops = ONE_CONV_FLOPS * 4 * 16
    ceiling = _fake_ceiling(torch.get_num_threads())
    row = bench.runtime_rows(_one_conv(), None, x, lambda a, b: True, repeats=2, ceiling=ceiling)
    assert row["backend"] == "torch"  # no package: torch only
    assert row["forward_flops"] == flops and "multiply-add = 2 FLOPs" in row["flop_convention"]
    for side, seconds in (("torch_achieved", row["torch_seconds"]), ("runtime_achieved", row["runtime_seconds"])):
        achieved = row[side]
        assert achieved["ceiling_precision"] == "fp32" and achieved["ceiling_gflops"] == 100.0
        median, best = flops / statistics.median(seconds) / 1e9, flops / min(seconds) / 1e9
        rel = 0.01 + 5e-5 / max(min(seconds) - 5e-5, 1e-5)  # the row's seconds are rounded to 0.1 ms
        assert achieved["gflops"] == pytest.approx(median, abs=0.06, rel=rel)
        assert achieved["best_gflops"] == pytest.approx(best, abs=0.06, rel=rel)
        assert achieved["share_of_ceiling"] == pytest.approx(achieved["best_gflops"] / 100.0, abs=1e-3)
        assert achieved["median_share_of_ceiling"] == pytest.approx(achieved["gflops"] / 100.0, abs=1e-3)
    assert "warning" not in row
    result = {"runtime": {"one-conv": row}, "ceiling": ceiling}
    table = bench.task_table(result)
    line = next(line for line in table.splitlines() if "share of the ceiling" in line)
    assert "GFLOP/s = " in line and "% of fp32 (median" in line
    assert "ceiling with" in table and "fp32 100 GFLOP/s (torch fp32 matmul)" in table
    assert "bf16 400 GFLOP/s" in table
    assert ("A share above 100 %" in table) == (max(row["torch_achieved"]["share_of_ceiling"],
                                                    row["runtime_achieved"]["share_of_ceiling"]) > 1.0)
    tiny = {**ceiling, "fp32_gflops": 1e-6}  # any forward beats it: the table says the shares cannot be read
    row = bench.runtime_rows(_one_conv(), None, x, lambda a, b: True, repeats=1, ceiling=tiny)
    assert row["torch_achieved"]["share_of_ceiling"] > 1.0
    assert "A share above 100 %" in bench.task_table({"runtime": {"one-conv": row}, "ceiling": tiny})


def test_gradcam_row_times_the_pass_a_study_runs_with_the_forwards_flops():
    from ICHDetectorLib.model import ich_resnet2d

    torch.manual_seed(0)
    network = ich_resnet2d(9, 6, (8, 8, 16, 16)).eval()
    x = torch.rand(4, 9, 32, 32).numpy()
    ceiling = _fake_ceiling(torch.get_num_threads())
    row = bench.gradcam_row(network, x, "layer3", repeats=2, ceiling=ceiling, class_index=0, bf16=False)
    assert row["input_shape"] == [4, 9, 32, 32] and row["layer"] == "layer3" and len(row["seconds"]) == 2
    assert row["forward_flops"] == bench.forward_flops(network, x)
    best = row["forward_flops"] / min(row["seconds"]) / 1e9
    # GFLOP/s are rounded to 0.1 and the row's seconds to 0.1 ms
    assert row["achieved"]["best_gflops"] == pytest.approx(best, abs=0.06, rel=0.01 + 5e-5 / min(row["seconds"]))
    line = next(line for line in bench.task_table({"gradcam": {"n": row}, "ceiling": ceiling}).splitlines()
                if line.startswith("Grad-CAM pass n 4x9x32x32 at layer3"))
    assert "% of fp32" in line
    assert "forward_flops" not in bench.gradcam_row(network, x, "layer3", repeats=1, class_index=0)


def test_runtime_row_without_a_ceiling_has_no_share_and_a_thread_mismatch_is_said():
    x = torch.rand(1, 3, 16, 16).numpy()
    row = bench.runtime_rows(_one_conv(), None, x, lambda a, b: True, repeats=1)
    assert "forward_flops" not in row and "achieved" not in bench.task_table({"runtime": {"n": row}})
    other = _fake_ceiling(torch.get_num_threads() + 1)
    row = bench.runtime_rows(_one_conv(), None, x, lambda a, b: True, repeats=1, ceiling=other)
    assert "threads" in row["warning"]
    assert row["warning"] in bench.task_table({"runtime": {"n": row}, "ceiling": other})


def test_ceiling_for_matches_the_backend_precision():
    ceiling = _fake_ceiling(2)
    assert bench.ceiling_for(ceiling, "openvino-bf16") == (400.0, "bf16")
    for backend in ("torch", "onnxruntime", "openvino"):
        assert bench.ceiling_for(ceiling, backend) == (100.0, "fp32")
    assert bench.ceiling_for({**ceiling, "bf16_gflops": None}, "openvino-bf16") == (None, "bf16")


def test_machine_ceiling_measures_with_the_given_threads_and_restores_torch_threads(monkeypatch):
    before = torch.get_num_threads()
    threads = 1 if before != 1 else 2
    monkeypatch.setenv("MEDDL_RUNTIME", "torch")  # as in the suite's process: OpenVINO is left alone by default
    ceiling = bench.machine_ceiling(threads, seconds_per_kernel=0.01, matmul_size=64, conv_size=16)
    assert torch.get_num_threads() == before
    assert ceiling["threads"] == threads
    m = ceiling["measurements"]
    assert m["torch fp32 matmul"]["flops_per_call"] == 2 * 64 ** 3
    # outputs x multiply-adds per output x 2: 256 channels, conv2d on (4, 256, 4, 4), conv3d on (1, 256, 1, 2, 2)
    assert m["torch fp32 conv2d"]["flops_per_call"] == 2 * (4 * 256 * 4 * 4) * (256 * 9)
    assert m["torch fp32 conv3d"]["flops_per_call"] == 2 * (256 * 1 * 2 * 2) * (256 * 27)
    assert not any(name.startswith("openvino") for name in m)
    fp32 = {k: v["best_gflops"] for k, v in m.items() if v["precision"] == "fp32"}
    assert ceiling["fp32_gflops"] == max(fp32.values()) > 0 and ceiling["fp32_from"] in fp32
    assert all(len(v["batch_gflops"]) == 4 and v["best_gflops"] == max(v["batch_gflops"]) >= v["gflops"]
               for v in m.values())
    assert "ceiling with" in bench.ceiling_line(ceiling)


class _ConvThenLinear(torch.nn.Module):
    """A forward of conv + linear, and a named method ``features`` of the conv alone (as glioma's evidence_map)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = _one_conv(), torch.nn.Linear(8 * 16 * 16, 1, bias=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def test_runtime_row_times_and_counts_the_named_forward_the_task_runs():
    net, x = _ConvThenLinear().eval(), torch.rand(2, 3, 16, 16).numpy()
    ceiling = _fake_ceiling(torch.get_num_threads())
    whole = bench.runtime_rows(net, None, x, lambda a, b: True, repeats=1, ceiling=ceiling)
    named = bench.runtime_rows(net, None, x, lambda a, b: True, repeats=1, ceiling=ceiling, forward="features")
    assert whole["forward"] == "forward" and named["forward"] == "features"
    assert whole["forward_flops"] == ONE_CONV_FLOPS + 2 * 2 * (8 * 16 * 16) * 1
    assert named["forward_flops"] == ONE_CONV_FLOPS


def test_child_peak_memory_is_the_childs_own_not_its_parents(tmp_path):
    """A forked child starts with its parent's resident size in ``ru_maxrss`` (kept across exec); the bench reports
    the child's own high-water mark, so a bench holding a large CT does not inflate its children's peaks."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import numpy as np

    held = np.ones(600 * 2**20 // 8)  # 600 MB touched in this (the parent) process
    code, _, peak_mb = bench.run_meddl_child(["--help"], tmp_path / "log.txt", "ICHDetectorLib.cli:TASK",
                                             Path(__file__).resolve().parents[1] / "ICHDetector")
    assert code == 0 and "usage" in (tmp_path / "log.txt").read_text()
    assert 10 < peak_mb < 400
    # the control: the same kind of child, measured by ru_maxrss, carries the parent's 600 MB
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    _, _, usage = os.wait4(proc.pid, 0)
    assert usage.ru_maxrss / 1024 > 600 and held[-1] == 1.0


def test_the_caveat_says_the_load_it_was_measured_under(monkeypatch):
    from MedDLLib import bench

    monkeypatch.setattr(bench.os, "getloadavg", lambda: (0.05, 0.1, 0.1))
    assert "Load average 0.05" in bench.caveat() and "(idle)" in bench.caveat()
    monkeypatch.setattr(bench.os, "getloadavg", lambda: (3.2, 2.0, 1.0))
    assert "(other work running)" in bench.caveat()
    assert "(other work running)" in bench.task_table({})
