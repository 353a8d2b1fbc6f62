"""Choosing the torch device (CPU or CUDA) the same way everywhere: GUI, ``meddl`` command, batch, tests.

Rules of :func:`select_device`:

* nothing requested (``None`` or ``"auto"``): the first CUDA GPU when torch sees one, else the CPU;
* ``"cpu"``: the CPU;
* ``"cuda"`` or ``"cuda:N"``: that GPU, or an :class:`~MedDLLib.errors.InputError` saying why it cannot be used
  (torch built without CUDA, no GPU visible, index out of range) -- never a silent fall-back to the CPU;
* ``force_cpu=True`` (the GUI's "Force CPU" box, ``--device cpu``): the CPU whatever was requested.

The chosen device and the reason are reported once per process (per distinct choice): through :mod:`logging`
(logger ``MedDLLib.device``, level INFO) when the host configured logging to show it (Slicer), otherwise on
stderr.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import InputError

if TYPE_CHECKING:  # torch is imported lazily: the ``meddl`` parser must not pay for it
    import torch

logger = logging.getLogger(__name__)

#: Messages already reported in this process (one line per distinct choice).
_ANNOUNCED: set[str] = set()

_CUDA_RE = re.compile(r"^cuda(?::(\d+))?$")


def select_device(requested: str | None = None, force_cpu: bool = False) -> "torch.device":
    """The device to run on, following the rules in the module docstring.

    Args:
        requested: ``None``/``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (case-insensitive).
        force_cpu: use the CPU even when a GPU is present or ``requested`` names one.

    Returns:
        A :class:`torch.device`; the choice and its reason are reported once per process.

    Raises:
        InputError: an unknown device string, or a CUDA device that this machine cannot provide.
    """
    import torch

    text = "auto" if requested is None else str(requested).strip().lower()
    match = _CUDA_RE.match(text)
    if text not in ("auto", "cpu") and match is None:
        raise InputError(f"unknown device {requested!r}; expected 'auto', 'cpu', 'cuda' or 'cuda:N'")

    if force_cpu:
        device = torch.device("cpu")
        reason = "CPU forced" + (f" (overrides the requested {text!r})" if text not in ("auto", "cpu") else "")
    elif text == "cpu":
        device, reason = torch.device("cpu"), "CPU requested"
    elif text == "auto":
        if torch.cuda.is_available():
            device, reason = torch.device("cuda", 0), "CUDA GPU found"
        else:
            device, reason = torch.device("cpu"), f"no CUDA GPU found ({_why_no_cuda()})"
    else:
        if not torch.cuda.is_available():
            raise InputError(f"device {requested!r} requested but no CUDA GPU can be used: {_why_no_cuda()}; "
                             "use --device cpu (or 'auto')")
        index = int(match.group(1) or 0)
        count = torch.cuda.device_count()
        if index >= count:
            raise InputError(f"device {requested!r} requested but this machine has {count} CUDA GPU(s) "
                             f"(cuda:0 .. cuda:{count - 1})")
        device, reason = torch.device("cuda", index), "CUDA requested"

    announce(f"MedDL device: {describe_device(device)} [{reason}]")
    return device


def select_inference_device(requested: str | None = None, force_cpu: bool = False) -> "torch.device | str":
    """The device of a prediction (``meddl infer``, ``batch``): :func:`select_device`'s choice, but ``"cpu"`` (a
    string every torch call takes) without importing torch when the choice is the CPU whatever torch would say:
    ``force_cpu``, ``"cpu"`` requested, or ``"auto"`` on a machine with no GPU driver (:func:`gpu_driver_present`).
    A prediction that then runs on a recorded runtime export never imports torch (about 1 s on a laptop CPU).

    Raises:
        InputError: as :func:`select_device`.
    """
    text = "auto" if requested is None else str(requested).strip().lower()
    if text not in ("auto", "cpu") and _CUDA_RE.match(text) is None:
        raise InputError(f"unknown device {requested!r}; expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if force_cpu:
        reason = "CPU forced" + (f" (overrides the requested {text!r})" if text not in ("auto", "cpu") else "")
    elif text == "cpu":
        reason = "CPU requested"
    elif text == "auto" and "torch" not in sys.modules and not gpu_driver_present():
        reason = "no CUDA GPU found (no GPU driver on this machine)"
    else:
        return select_device(requested, force_cpu)
    announce(f"MedDL device: cpu ({cpu_threads()} threads) [{reason}]")
    return "cpu"


def gpu_driver_present() -> bool:
    """Whether this machine may have a GPU torch could use: True unless it is Linux without a GPU driver's files
    (NVIDIA's ``/proc/driver/nvidia`` or ``/dev/nvidiactl``, WSL's ``/dev/dxg``, ROCm's ``/dev/kfd``), or macOS
    (no CUDA). Elsewhere (Windows) True: only torch can tell."""
    if sys.platform == "darwin":
        return False
    if sys.platform.startswith("linux"):
        return any(Path(p).exists() for p in ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/dxg", "/dev/kfd"))
    return True


def cpu_threads() -> int:
    """The threads torch's CPU kernels use (``torch.get_num_threads()``), known without importing torch:
    ``$OMP_NUM_THREADS`` (or ``$MKL_NUM_THREADS``) when set, else the physical cores this process may run on (what
    torch takes by default). The forward runtimes (:mod:`MedDLLib.runtime`) use as many."""
    if "torch" in sys.modules:
        return max(1, sys.modules["torch"].get_num_threads())
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        value = os.environ.get(name, "").split(",")[0].strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return physical_cores()


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (Linux: from ``/proc/cpuinfo``, read once per set of
    allowed CPUs; elsewhere ``os.cpu_count()``)."""
    try:
        allowed = frozenset(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        allowed = None
    return _physical_cores(allowed or None)


@functools.lru_cache(maxsize=4)
def _physical_cores(allowed: frozenset[int] | None) -> int:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return max(1, len(allowed) if allowed else (os.cpu_count() or 1))
    cores, fields = set(), {}
    for line in text.splitlines() + [""]:
        if not line.strip():
            if "processor" in fields and (allowed is None or int(fields["processor"]) in allowed):
                cores.add((fields.get("physical id", "0"), fields.get("core id", fields["processor"])))
            fields = {}
        elif ":" in line:
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    return max(1, len(cores) or (len(allowed) if allowed else (os.cpu_count() or 1)))


#: CPU flags that decide which kernels a forward runs (vector width, bf16 and int8 dot products, AMX).
KERNEL_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


def cpu_model() -> dict[str, Any]:
    """The CPU the forwards run on: ``{"cpu": model name, "cpu_flags": the KERNEL_FLAGS it has}`` (Linux: from
    ``/proc/cpuinfo``; elsewhere ``platform.processor()`` and no flags). Read once per process; nothing is
    imported."""
    model, flags = _cpu_model()
    return {"cpu": model, "cpu_flags": list(flags)}


@functools.lru_cache(maxsize=1)
def _cpu_model() -> tuple[str, tuple[str, ...]]:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        import platform

        return platform.processor() or platform.machine(), ()
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")
    flags = set(next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), []))
    return model, tuple(flag for flag in KERNEL_FLAGS if flag in flags)


def describe_device(device: "torch.device | str") -> str:
    """One line naming ``device``: ``"cpu (2 threads)"`` or ``"cuda:0 (NVIDIA H100, 79.1 GiB)"``."""
    import torch

    device = torch.device(device)
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    if device.type == "cuda":
        index = device.index if device.index is not None else 0
        try:
            props = torch.cuda.get_device_properties(index)
            return f"cuda:{index} ({props.name}, {props.total_memory / 2**30:.1f} GiB)"
        except (RuntimeError, AssertionError, AttributeError):  # no driver / torch without CUDA
            return f"cuda:{index}"
    return str(device)


def _why_no_cuda() -> str:
    import torch

    if torch.version.cuda is None:
        return f"this torch {torch.__version__} is a CPU-only build"
    return f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU or driver"


def announce(message: str) -> None:
    """Report ``message`` once per process: to logging when configured, else to stderr."""
    if message in _ANNOUNCED:
        return
    _ANNOUNCED.add(message)
    if logger.hasHandlers() and logger.isEnabledFor(logging.INFO):
        logger.info(message)
    else:
        print(message, file=sys.stderr)
