#!/usr/bin/env bash
# Create .venv (Python 3.11) and install MedDL with its test extra. Idempotent; safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if ! "$PY" -c "import venv, ensurepip" 2>/dev/null; then
  echo "setup: installing python3-venv (Debian)"; apt-get update -qq && apt-get install -y -qq python3-venv
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# The CPU build of torch first (a bare `torch` would pull several GB of CUDA packages).
python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[test]"
# Headless Chromium: the demo report's browser check (Testing/test_demo_report.py) opens index.html in it.
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null; then
  echo "setup: installing chromium (Debian)"; apt-get update -qq && apt-get install -y -qq chromium || \
    echo "setup: chromium not installed; the browser check of the demo report will be skipped"
fi
# dicom3tools: dciodvfy validates the DICOM SEG objects MedDL writes (Testing/test_dicomseg.py).
if ! command -v dciodvfy >/dev/null && command -v apt-get >/dev/null; then
  echo "setup: installing dicom3tools (Debian)"; apt-get update -qq && apt-get install -y -qq dicom3tools || \
    echo "setup: dicom3tools not installed; the dciodvfy checks of the DICOM SEG tests will be skipped"
fi
echo "setup: ready ($(python --version), torch $(python -c 'import torch; print(torch.__version__)'))"
