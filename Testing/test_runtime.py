"""The runtime checks of :mod:`MedDLLib.runtime` (``Testing/runtime_checks.py``), run in a child pytest.

The suite's own process runs networks on torch (``conftest.py`` makes ``$MEDDL_RUNTIME`` default to ``torch``:
each package's first runtime use exports it and times every candidate), and these checks run here, in a child with
``MEDDL_RUNTIME=auto``, so that a native crash in a runtime fails this test instead of ending the suite. (Runtime
sessions, then DataLoader workers, once crashed a process: ``test_runtime_then_training.py``.)
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
