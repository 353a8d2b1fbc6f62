"""Runtime sessions, then training with DataLoader workers, in one process (the crash of issue 20's README note).

OpenVINO's CPU plugin gives the thread that compiles a model an alternate signal stack (``sigaltstack``, for the
AMX register state) and, when that plugin instance goes away, unmaps it and puts back the stack it found. One
``ov.Core`` per session made one plugin instance per session, so sessions freed in any order but the reverse of
their creation left the thread's alternate stack pointing at unmapped (or by then reused) memory. Every Python
signal handler runs on that stack (CPython installs them with ``SA_ONSTACK``): the SIGCHLD handler a multi-worker
DataLoader installs then crashed the process when a worker exited, either at once (the kernel cannot write the
signal frame: SIGSEGV) or later (it wrote the frame over a new thread's frames). :mod:`MedDLLib.runtime` now
compiles every OpenVINO session on one process-wide ``ov.Core``.

Each check runs in a child process: before the fix the child dies with a segmentation fault, which must not take
this suite's process with it (``conftest.py`` makes this process run networks on torch).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TESTING = Path(__file__).resolve().parent

#: Child preamble: tiny networks whose runners choose a runtime (every candidate's session made), and a check
#: of the calling thread's alternate signal stack against the process's memory map.
_PREAMBLE = textwrap.dedent("""
    import ctypes, gc, sys
    from pathlib import Path

    import numpy as np
    import torch

    from MedDLLib import runtime

    root = Path(sys.argv[1])


    def chosen_runner(name, seed):
        torch.manual_seed(seed)
        network = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
                                      torch.nn.Conv2d(4, 1, 1)).eval()
        runner = runtime.Runner(network, folder=root / name, weights_sha256=str(seed))
        x = np.random.default_rng(seed).random((2, 1, 16, 16), dtype=np.float32)
        runner(x)  # the choice (it releases each beaten candidate's session as it goes)
        for backend in ("onnxruntime", "openvino"):  # both held, as by a process that ran both
            runner._session(backend, x.shape)
        assert {b for b, _ in runner._sessions} >= {"onnxruntime", "openvino"}, runner._sessions
        return runner


    class Stack(ctypes.Structure):
        _fields_ = [("sp", ctypes.c_void_p), ("flags", ctypes.c_int), ("size", ctypes.c_size_t)]


    def signal_stack_problem():
        \"\"\"None when this thread has no alternate signal stack or one inside mapped memory; else what is wrong.\"\"\"
        stack = Stack()
        if ctypes.CDLL(None, use_errno=True).sigaltstack(None, ctypes.byref(stack)) != 0:
            return "sigaltstack failed"
        if stack.flags & 2 or not stack.sp:  # SS_DISABLE
            return None
        lo, hi = stack.sp, stack.sp + stack.size
        for line in Path("/proc/self/maps").read_text().splitlines():
            start, end = (int(v, 16) for v in line.split()[0].split("-"))
            if start <= lo and hi <= end:
                return None
        return f"the alternate signal stack {lo:#x}-{hi:#x} is not mapped"


    def make_and_free_two_runners():
        first, second = chosen_runner("a", 0), chosen_runner("b", 1)
        del first  # freed in the order they were made, not the reverse
        gc.collect()
        del second
        gc.collect()
""")

_STACK_CHECK = _PREAMBLE + textwrap.dedent("""
    make_and_free_two_runners()
    problem = signal_stack_problem()
    print(problem or "signal stack ok")
    sys.exit(3 if problem else 0)
""")

_TRAIN_AFTER = _PREAMBLE + textwrap.dedent("""
    kept = chosen_runner("c", 2)  # alive across the training (its thread pools too when the workers fork)
    x = np.random.default_rng(2).random((2, 1, 16, 16), dtype=np.float32)
    sessions = {b: kept._session(b, x.shape) for b in ("onnxruntime", "openvino")}
    before = {b: session.run(x) for b, session in sessions.items()}
    make_and_free_two_runners()
    sys.path.insert(0, sys.argv[2])
    import training_toy as toy
    from MedDLLib.datasets import FileDataset
    from MedDLLib.training import TrainConfig, train

    toy.write_blob_dataset(root / "train", 16, seed=1)
    toy.write_blob_dataset(root / "val", 8, seed=2)
    torch.manual_seed(0)
    config = TrainConfig(out=root / "model", epochs=2, batch_size=4, lr=1e-2, seed=5, device="cpu", num_workers=2)
    result = train(toy.TinyNet(0.3), FileDataset(sorted((root / "train").glob("*.npy")), toy.load_sample,
                                                 transform=toy.random_flip),
                   FileDataset(sorted((root / "val").glob("*.npy")), toy.load_sample), toy.bce_loss, config,
                   metadata=toy.package_metadata(0.3, n_studies=16))
    assert result.epochs_run == 2
    assert all(np.array_equal(session.run(x), before[b]) for b, session in sessions.items())  # still running
    print("trained")
""")


def _run_child(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MEDDL_RUNTIME": "auto", "MEDDL_HOME": str(tmp_path / "home")}
    return subprocess.run([sys.executable, "-c", code, str(tmp_path), str(TESTING)], env=env, capture_output=True,
                          text=True, timeout=300)


def _explain(done: subprocess.CompletedProcess) -> str:
    return f"exit code {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"


pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sigaltstack and /proc: Linux")


def test_runtime_sessions_freed_in_any_order_leave_a_valid_signal_stack(tmp_path):
    done = _run_child(_STACK_CHECK, tmp_path)
    assert done.returncode == 0 and "signal stack ok" in done.stdout, _explain(done)


def test_training_with_two_workers_after_runtime_sessions_exits_cleanly(tmp_path):
    done = _run_child(_TRAIN_AFTER, tmp_path)
    assert done.returncode == 0 and "trained" in done.stdout, _explain(done)
