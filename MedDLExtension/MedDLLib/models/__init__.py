"""Model packages (one checkpoint format, each a MONAI bundle), the network registry and the local model cache.

One concept per module; the names other code imports are re-exported here (``from MedDLLib import models``):

- :mod:`.registry`: which networks metadata may name and how they are built (allow-list, task declarations);
- :mod:`.package`: one package on disk (metadata, weights, checksum; save, load, verify);
- :mod:`.monai_spec`: the MONAI bundle side of a package (spec metadata keys, ``configs/inference.json``);
- :mod:`.cache`: the local model cache (list, resolve, import, verify, remove).

The ``meddl models`` command is :mod:`MedDLLib.commands_models`.

A package's ``configs/metadata.json`` (written by :func:`save_package`; keys marked * are filled in by it)::

    {
      "format": "meddl-model/1",                               *
      "task": "ich", "version": "1.0.0", "recipe": "improved",
      "network": {"name": "monai.networks.nets.resnet10", "args": {"spatial_dims": 3, ...}},
      "input": {"channels": ["brain", "subdural", "bone"], "windows": ..., "spacing_mm": ..., "size": ...},
      "output": {"labels": ["any", "epidural", ...], "gradcam_layer": "layer4"},
      "training_data": {"kind": "synthetic" | "real", "n_studies": 40, "description": "meddl phantom ich ..."},
      "metrics": {"auroc": {"value": 0.91, "ci95": [0.85, 0.95]}, ...},
      "sha256": "<hex digest of models/model.pt>",             *
      "libraries": {"torch": ..., "monai": ..., "meddl": ..., "numpy": ..., "python": ...},   *
      "created": "2025-01-01T12:00:00+00:00",                  * (kept when given)
      "schema": ..., "changelog": ..., "monai_version": ..., "network_data_format": ..., ...   * (MONAI bundle)
    }

Only ``input.channels`` and ``output.labels`` are required inside ``input``/``output``; tasks add what their
preprocessing needs (windows, normalisation, spacing, size; sizes are bounded, see
:data:`~MedDLLib.models.package.INPUT_SIZE_KEYS`).
"""

from __future__ import annotations

from .cache import (HOME_ENV, cache_dir, copy_package_tree, import_model, list_models, load_package,
                    load_task_model, read_metadata, remove_model, resolve_model, verify_model)
from .monai_spec import INFERENCE_FILE
from .package import (FORMAT, METADATA_FILE, PICKLE_REFUSAL, TRAINING_DATA_KINDS, WEIGHTS_FILE, ModelPackage,
                      check_state_fits, library_versions, read_state_dict, save_package, validate_metadata,
                      write_json)
from .registry import MONAI_NETWORKS, available_networks, build_network, network_factory, register_network
from ..errors import InputError, ModelError

__all__ = [
    "FORMAT", "HOME_ENV", "INFERENCE_FILE", "METADATA_FILE", "MONAI_NETWORKS", "PICKLE_REFUSAL",
    "TRAINING_DATA_KINDS", "WEIGHTS_FILE", "InputError", "ModelError", "ModelPackage", "available_networks",
    "build_network", "cache_dir", "check_state_fits", "copy_package_tree", "import_model", "library_versions",
    "list_models",
    "load_package", "load_task_model", "network_factory", "read_metadata", "read_state_dict", "register_network",
    "remove_model", "resolve_model", "save_package", "validate_metadata",
    "verify_model", "write_json",
]
