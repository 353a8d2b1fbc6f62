"""The runtime checks of :mod:`MedDLLib.runtime` (``Testing/runtime_checks.py``), run in a child pytest.

ONNX Runtime's and OpenVINO's native thread pools, once loaded into a process, crashed later torch training in
that same process (a segmentation fault in a native thread, seen when this suite ran ``runtime_checks.py`` and then
``test_training.py`` in one process). So the suite's own process never loads them: ``conftest.py`` makes
``$MEDDL_RUNTIME`` default to ``torch`` there, and the checks that exercise the runtimes run here, in a child with
``MEDDL_RUNTIME=auto``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.mark.slow
def test_runtime_checks_pass_in_a_child_process():
    env = {**os.environ, "MEDDL_RUNTIME": "auto"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-ra",
                           str(HERE / "runtime_checks.py")], cwd=HERE.parent, env=env, capture_output=True,
                          text=True, timeout=1800)
    print(done.stdout[-3000:])
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and " failed" not in done.stdout
