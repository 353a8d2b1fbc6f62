"""The network registry: which networks a package's metadata may name, and how they are built.

Metadata names a network (``{"network": {"name": ..., "args": {...}}}``); :func:`build_network` builds it from an
allow-list, never by importing what the metadata names:

- MONAI networks of :data:`MONAI_NETWORKS` (``monai.networks.nets.<Name>`` or ``<Name>``; ``pretrained`` is forced
  to False, nothing is downloaded). ``resnet10/18/34`` and ``BasicUNet`` with arguments in the mirrored subset
  are built by :mod:`.nets` (pure-torch, state-dict compatible with MONAI's classes, without MONAI's 2 s
  import); any other name or argument set builds MONAI's own class. The bundle's ``_target_``
  (:func:`network_target`) is MONAI's class either way;
- networks registered at run time with :func:`register_network` (a task library registers its own when imported);
- networks a *task declares* (:attr:`MedDLLib.tasks.Task.networks`: name -> ``"module:attribute"``): given the
  package's task name, the task registry (:func:`MedDLLib.taskregistry.task_networks`) loads that one task and
  returns its declaration; this module never imports a task library by naming convention.

Before a network is allocated its size is checked on PyTorch's ``meta`` device (no memory): a network over
:data:`MAX_PARAMETERS` parameters (a width of 10**6 in a hostile package) is refused with one line.
"""

from __future__ import annotations

import importlib
import inspect
from typing import TYPE_CHECKING, Any, Callable, Mapping

from .. import taskregistry
from ..errors import ModelError

if TYPE_CHECKING:  # torch is imported lazily: the ``meddl`` parser must not pay for it
    import torch

#: MONAI networks metadata may name (``monai.networks.nets.<Name>`` or just ``<Name>``).
MONAI_NETWORKS: tuple[str, ...] = (
    "resnet10",
    "resnet18",
    "resnet34",
    "resnet50",
    "DenseNet121",
    "BasicUNet",
    "BasicUNetPlusPlus",
    "FlexibleUNet",
    "UNet",
    "SegResNet",
    "EfficientNetBN",
)
MONAI_PREFIX = "monai.networks.nets."
#: Largest network a package may describe (parameters). MONAI's largest zoo networks have ~100 M.
MAX_PARAMETERS = 1_000_000_000

_NETWORKS: dict[str, Callable[..., Any]] = {}


def register_network(name: str, factory: Callable[..., "torch.nn.Module"]) -> None:
    """Make ``factory(**args)`` buildable from metadata ``{"network": {"name": name, "args": args}}``.

    Task modules call this when imported (re-registering a name replaces it, so module reloads work).
    Names starting with ``monai.`` are reserved for :data:`MONAI_NETWORKS`.
    """
    if not isinstance(name, str) or not name or name.startswith("monai."):
        raise ValueError(f"invalid network name {name!r} (non-empty, not starting with 'monai.')")
    if not callable(factory):
        raise ValueError(f"factory for network {name!r} is not callable")
    _NETWORKS[name] = factory


def available_networks() -> list[str]:
    """Names :func:`build_network` knows now: registered ones plus the MONAI allow-list."""
    return sorted(_NETWORKS) + [MONAI_PREFIX + n for n in MONAI_NETWORKS]


def network_factory(name: str, task: Any = None, args: Mapping[str, Any] | None = None) -> Callable[..., Any] | None:
    """The factory for network ``name`` of a package of ``task``, or None when it is not allowed/known.

    For a MONAI network called with ``args`` in the subset :mod:`.nets` mirrors, the mirror's factory (no MONAI
    import); without ``args``, or with arguments outside that subset, MONAI's own class.
    """
    if not isinstance(name, str):
        return None
    if name in _NETWORKS:
        return _NETWORKS[name]
    short = _monai_short_name(name)
    if short is not None:
        if args is not None:
            from . import nets as mirror

            factory = mirror.mirror_factory(short, args)
            if factory is not None:
                return factory
        import monai.networks.nets as nets

        return getattr(nets, short)
    if isinstance(task, str):
        try:
            entry = dict(taskregistry.task_networks(task)).get(name)
        except Exception:  # noqa: BLE001 - a missing or broken task only means "unknown network" here
            return None
        if entry:
            factory = _load_entry(entry)
            if factory is not None:
                _NETWORKS.setdefault(name, factory)
                return _NETWORKS[name]
    return None


def _monai_short_name(name: str) -> str | None:
    """``"BasicUNet"`` for ``"monai.networks.nets.BasicUNet"`` or ``"BasicUNet"``; None for names not in
    :data:`MONAI_NETWORKS`."""
    short = name[len(MONAI_PREFIX):] if name.startswith(MONAI_PREFIX) else name
    return short if short in MONAI_NETWORKS else None


def _load_entry(entry: str) -> Callable[..., Any] | None:
    """The callable at ``"module:attribute"`` (declared by an installed task, never by a package)."""
    module_name, _, attribute = entry.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError):
        return None
    return obj if callable(obj) else None


def network_target(name: str, task: Any = None) -> str:
    """The importable dotted path of network ``name`` (a MONAI bundle's ``network_def._target_``): MONAI's class
    for MONAI's networks (also where MedDL builds the mirror of :mod:`.nets`; MONAI is not imported here)."""
    short = _monai_short_name(name) if isinstance(name, str) and name not in _NETWORKS else None
    if short is not None:
        return MONAI_PREFIX + short
    factory = network_factory(name, task)
    if factory is None:
        raise ModelError(f"unknown network {name!r}")
    module, qualname = getattr(factory, "__module__", ""), getattr(factory, "__qualname__", "")
    if module.startswith("monai.networks.nets"):
        return MONAI_PREFIX + qualname
    return f"{module}.{qualname}"


def build_network(metadata_or_package: Any, *, on_meta: bool = False) -> "torch.nn.Module":
    """Build the (untrained) network a package's metadata names, with its arguments.

    Args:
        metadata_or_package: a :class:`~MedDLLib.models.ModelPackage` or a metadata dict with
            ``network.name``/``network.args`` (and ``task``, to find the task's declared networks).
        on_meta: build on PyTorch's ``meta`` device (shapes only, no memory), e.g. to compare with weights.

    Raises:
        ModelError: unknown network name (lists the known ones), arguments the factory rejects, or a network
            larger than :data:`MAX_PARAMETERS` (checked without allocating it).
    """
    metadata = getattr(metadata_or_package, "metadata", metadata_or_package)
    spec = metadata.get("network") if isinstance(metadata, Mapping) else None
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
        raise ModelError("metadata has no network.name: cannot build a network")
    name, args = spec["name"], spec.get("args") or {}
    if not isinstance(args, Mapping):
        raise ModelError(f"network.args of {name!r} must be an object, got {type(args).__name__}")
    args = dict(args)
    factory = network_factory(name, metadata.get("task"), args)
    if factory is None:
        raise ModelError(f"unknown network {name!r}: not a MONAI network MedDL allows nor one the task "
                         f"{metadata.get('task')!r} declares; known: {', '.join(available_networks())}")
    try:
        if "pretrained" in inspect.signature(factory).parameters:
            args["pretrained"] = False  # never download weights at run time
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        pass
    import torch

    skeleton = _build_on_meta(factory, name, args)
    n_parameters = int(sum(p.numel() for p in skeleton.parameters()) + sum(b.numel() for b in skeleton.buffers()))
    if n_parameters > MAX_PARAMETERS:
        raise ModelError(f"network {name!r} with args {_short(args)} would have {n_parameters:,} parameters "
                         f"(more than MedDL's limit of {MAX_PARAMETERS:,}); refused")
    if on_meta:
        return skeleton
    try:
        with torch.device("cpu"):
            return factory(**args)
    except (TypeError, ValueError, KeyError, AssertionError, RuntimeError, IndexError, ZeroDivisionError) as exc:
        raise ModelError(f"cannot build network {name!r} with args {_short(args)}: {_first_line(exc)}") from exc


def _build_on_meta(factory: Callable[..., Any], name: str, args: Mapping[str, Any]) -> "torch.nn.Module":
    """``factory(**args)`` built on the meta device (no memory allocated)."""
    import torch

    try:
        with torch.device("meta"), _skip_random_init():
            module = factory(**args)
    except (TypeError, ValueError, KeyError, AssertionError, RuntimeError, IndexError, ZeroDivisionError,
            OverflowError, MemoryError) as exc:
        raise ModelError(f"cannot build network {name!r} with args {_short(args)}: {_first_line(exc)}") from exc
    if not isinstance(module, torch.nn.Module):
        raise ModelError(f"network {name!r} did not build a torch module (got {type(module).__name__})")
    return module


#: In-place random fills of ``torch.Tensor``, skipped on the meta device (see :func:`_skip_random_init`).
_RANDOM_FILLS = ("normal_", "uniform_", "random_", "bernoulli_", "exponential_", "log_normal_", "cauchy_",
                 "geometric_")


def _skip_random_init() -> Any:
    """A torch function mode that makes weight initialisation a no-op: the ``torch.nn.init`` functions and the
    in-place random fills return their tensor untouched. On the meta device there are no values to fill, and a
    random fill there goes through ``torch._refs``, whose first call imports ``torch._dynamo`` (about 3 s of
    start-up for nothing)."""
    import torch
    from torch.overrides import TorchFunctionMode

    fills = {getattr(torch.Tensor, name) for name in _RANDOM_FILLS}

    class SkipRandomInit(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None) -> Any:
            kwargs = kwargs or {}
            if func in fills or getattr(func, "__module__", "") == "torch.nn.init":
                return args[0] if args else kwargs.get("tensor", kwargs.get("self"))
            return func(*args, **kwargs)

    return SkipRandomInit()


def _short(args: Mapping[str, Any]) -> str:
    text = repr(dict(args))
    return text if len(text) <= 200 else text[:197] + "..."


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= 300 else line[:297] + "..."
