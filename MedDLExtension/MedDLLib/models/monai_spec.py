"""The MONAI-bundle side of a MedDL package: the spec's metadata keys and ``configs/inference.json``.

A MedDL package is a MONAI bundle (https://docs.monai.io/en/stable/mb_specification.html): its
``configs/metadata.json`` carries the keys the bundle specification requires (``schema``, ``version``,
``changelog``, ``monai_version``, ``pytorch_version``, ``numpy_version``, ``required_packages_version``, ``name``,
``task``, ``description``, ``authors``, ``copyright``, ``network_data_format``) beside MedDL's own keys, and
``configs/inference.json`` holds a ``network_def`` whose ``_target_`` is the network's importable class
(``monai.networks.nets.<Name>`` for MONAI's networks; for MedDL's own networks the dotted path of the task
library's class or factory, e.g. ``ICHDetectorLib.model.SeedCNN``, importable wherever MedDL is installed).
So ``monai.bundle.ConfigParser`` builds the network, ``monai.bundle.verify_net_in_out`` runs it on a random input
of ``network_data_format``'s shape and ``monai.bundle.load`` returns it with the weights.

MedDL's own loader never reads ``inference.json``: it builds networks from ``metadata.json``'s ``network`` through
its allow-list (:mod:`.registry`), so a ``_target_`` or ``$`` expression in a package is never evaluated by MedDL.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any, Mapping

from .registry import MONAI_PREFIX, network_factory, network_target

#: The metadata schema MONAI's own bundles name (nothing fetches it; the keys below are the spec's list).
SCHEMA_URL = ("https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
              "meta_schema_20240725.json")
#: Keys the MONAI bundle specification requires in ``configs/metadata.json``.
REQUIRED_KEYS: tuple[str, ...] = (
    "schema", "version", "changelog", "monai_version", "pytorch_version", "numpy_version",
    "required_packages_version", "name", "task", "description", "authors", "copyright", "network_data_format",
)
INFERENCE_FILE = "configs/inference.json"


def network_def(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The bundle's ``network_def``: ``{"_target_": <importable class>, **network.args}``."""
    spec = metadata["network"]
    args = copy.deepcopy(dict(spec.get("args") or {}))
    factory = network_factory(spec["name"], metadata.get("task"))
    try:
        if factory is not None and "pretrained" in inspect.signature(factory).parameters:
            args["pretrained"] = False  # MONAI's tools must not download either
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        pass
    return {"_target_": network_target(spec["name"], metadata.get("task")), **args}


def inference_config(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """``configs/inference.json`` of a MedDL package (what MONAI's tools read; MedDL itself never does)."""
    return {
        "bundle_root": ".",
        "meddl": "MedDL runs this package with `meddl infer <task> --model <name>`; this file serves MONAI's tools",
        "network_def": network_def(metadata),
    }


def bundle_metadata(metadata: Mapping[str, Any], libraries: Mapping[str, str], io: Mapping[str, Any]) -> dict:
    """The bundle specification's keys for a MedDL package's metadata (the caller's own keys win over these).

    Args:
        metadata: the MedDL metadata (task, version, network, input, output, training_data, metrics, ...).
        libraries: :func:`~MedDLLib.models.package.library_versions`.
        io: ``{"in_channels": int, "spatial_shape": [..], "out_channels": int, "segmentation": bool}`` from the
            built network (:func:`network_io`).
    """
    task, version = metadata["task"], metadata["version"]
    channels = metadata["input"]["channels"]
    channel_names = list(channels) if isinstance(channels, list) else [f"channel {i}" for i in range(channels)]
    labels = list(metadata["output"]["labels"])
    spatial = list(io["spatial_shape"])
    data = metadata["training_data"]
    out = {
        "schema": SCHEMA_URL,
        "version": version,
        "changelog": {version: f"MedDL {task} model, recipe {metadata.get('recipe')!r}"},
        "monai_version": libraries.get("monai", "unknown"),
        "pytorch_version": str(libraries.get("torch", "unknown")).split("+")[0],
        "numpy_version": libraries.get("numpy", "unknown"),
        "required_packages_version": {"meddl": libraries.get("meddl", "unknown")},
        "name": f"MedDL {task} {version}",
        "description": (f"MedDL {task} model ({metadata.get('recipe')} recipe) trained on {data.get('kind')} data: "
                        f"{data.get('description')}"),
        "authors": "MedDL user (trained with meddl train)",
        "copyright": "Copyright (c) the model's author",
        "intended_use": "Research use only; not for diagnostic purposes",
        "network_data_format": {
            "inputs": {"image": {
                "type": "image", "format": "magnitude", "num_channels": int(io["in_channels"]),
                "spatial_shape": spatial, "dtype": "float32", "value_range": [], "is_patch_data": False,
                "channel_def": {str(i): str(c) for i, c in enumerate(channel_names)},
            }},
            "outputs": {"pred": {
                "type": "image" if io["segmentation"] else "probabilities",
                "format": "segmentation" if io["segmentation"] else "classification",
                "num_channels": int(io["out_channels"]),
                "spatial_shape": spatial if io["segmentation"] else [],
                "dtype": "float32", "value_range": [], "is_patch_data": False,
                "channel_def": {str(i): str(c) for i, c in enumerate(labels)},
            }},
        },
    }
    return out


def network_io(network: Any, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """In/out channels and an input shape the network accepts, read from the built module and the ``input`` spec.

    The spatial shape comes from the input spec (``shape_kji``; ``depth`` x ``size`` x ``size``; ``size`` in each
    spatial dimension of the first convolution); output channels from ``output.labels``.
    """
    import torch

    conv = next((m for m in network.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))), None)
    dims = 2 if isinstance(conv, torch.nn.Conv2d) else 3
    in_channels = int(conv.in_channels) if conv is not None else _n_channels(metadata)
    spec = metadata["input"]
    if isinstance(spec.get("shape_kji"), list):
        spatial = [int(v) for v in spec["shape_kji"]]
    elif dims == 3 and isinstance(spec.get("depth"), int) and isinstance(spec.get("size"), int):
        spatial = [spec["depth"], spec["size"], spec["size"]]
    elif isinstance(spec.get("size"), int):
        spatial = [spec["size"]] * dims
    else:
        spatial = [32] * dims
    segmentation = _is_segmentation(metadata)
    return {"in_channels": in_channels, "spatial_shape": spatial, "out_channels": len(metadata["output"]["labels"]),
            "segmentation": segmentation}


def _n_channels(metadata: Mapping[str, Any]) -> int:
    channels = metadata["input"]["channels"]
    return len(channels) if isinstance(channels, list) else int(channels)


def _is_segmentation(metadata: Mapping[str, Any]) -> bool:
    name = metadata["network"]["name"]
    short = name[len(MONAI_PREFIX):] if name.startswith(MONAI_PREFIX) else name
    return "unet" in short.lower() or short in ("SegResNet",) or "postprocessing" in metadata
