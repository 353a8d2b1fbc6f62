"""What the LGG Segmenter widget needs beyond the shared :mod:`MedDLLib.results` (Qt-free, tested in pytest).

* :func:`input_nodes` / :func:`input_names`: FLAIR alone, or pre-contrast, FLAIR and post-contrast in the order
  the models take them (:data:`LGGSegmenterLib.dataset.CHANNELS`), with the file names the run writes them to;
* :func:`study_input`: what ``--input`` gets for those files (the FLAIR file, or the folder of the three);
* :func:`infer_arguments`: the ``meddl infer lgg`` command line (Testing/test_widgets.py parses it with the
  task's own argument parser);
* :data:`OUTPUTS`, :func:`load_results`, :func:`summary_text`: output files -> nodes, and the line shown.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from MedDLLib.errors import InputError
from MedDLLib.nodes import removed_on_error
from MedDLLib.options import infer_command
from MedDLLib.results import LoadedOutputs, load_outputs

from . import logic, options
from .dataset import CHANNELS

#: The task name of ``meddl infer``.
TASK = "lgg"
#: ``module:attribute`` of the task object the child process registers (Slicer has no entry points).
TASK_ENTRY = "LGGSegmenterLib.cli:TASK"
#: Output file -> node of a finished ``meddl infer lgg`` run (Grad-CAM only when asked for).
OUTPUTS = logic.OUTPUTS  # declared once, with the task (MedDLLib.pipeline)


def input_nodes(flair: Any, pre_contrast: Any = None, post_contrast: Any = None) -> list[Any]:
    """``[FLAIR]``, or ``[pre-contrast, FLAIR, post-contrast]`` when both contrast volumes are given.

    Raises:
        InputError: no FLAIR volume, or only one of the two contrast volumes (a model takes one or three).
    """
    if flair is None:
        raise InputError("select the FLAIR volume")
    if (pre_contrast is None) != (post_contrast is None):
        raise InputError("select both the pre-contrast and the post-contrast volume, or neither "
                         "(the models take FLAIR alone or all three channels)")
    return [flair] if pre_contrast is None else [pre_contrast, flair, post_contrast]


def input_names(count: int) -> list[str]:
    """File stems of :func:`input_nodes`' volumes: the channel names (``FLAIR``, or the three channels)."""
    if count not in (1, 3):
        raise ValueError(f"one or three input volumes, got {count}")
    return ["FLAIR"] if count == 1 else list(CHANNELS)


def study_input(files: Sequence[str | os.PathLike]) -> Path:
    """``--input`` for the files :func:`~MedDLLib.results.prepare_input` wrote: the FLAIR file itself, or the
    folder holding ``pre-contrast.nrrd``, ``FLAIR.nrrd`` and ``post-contrast.nrrd``."""
    paths = [Path(f) for f in files]
    if len(paths) == 1:
        return paths[0]
    if len(paths) != 3 or len({p.parent for p in paths}) != 1:
        raise ValueError(f"expected one file or three in one folder, got {paths}")
    return paths[0].parent


def infer_arguments(input_path: str | os.PathLike, model: str, output: str | os.PathLike, **values: Any) -> list[str]:
    """The ``meddl`` arguments of one run: ``infer lgg --input P --model M --output D`` and the options of
    :data:`LGGSegmenterLib.options.INFER` given in ``values`` (``gradcam``, ``force_cpu``).

    Raises:
        InputError: no model selected.
    """
    return infer_command(TASK, input_path, model, output, options.INFER, values)



def load_results(folder: str | os.PathLike, reference_node: Any) -> LoadedOutputs:
    """Add the outputs of a finished run to the reference (FLAIR) node's scene (:data:`OUTPUTS`); ``summary`` is
    :func:`summary_text`."""
    with removed_on_error(reference_node.GetScene()) as scene:
        loaded = load_outputs(scene, Path(folder), reference_node, OUTPUTS)
        loaded.summary = summary_text(loaded.result)
    return loaded


def _triple(values: Any) -> list[float] | None:
    if not isinstance(values, (list, tuple)) or len(values) != 3:
        return None
    numbers = [math.nan if v is None else float(v) for v in values]
    return None if any(math.isnan(v) for v in numbers) else numbers


def summary_text(result: dict[str, Any]) -> str:
    """``Tumour volume 12.30 mL; centroid R 10.0, A -5.2, S 31.0 mm; spread 8.1 x 6.0 x 4.2 mm (R x A x S)``,
    or ``No tumour found`` for an empty segmentation; always ends with "research use only"."""
    volume = result.get("tumour_volume_ml")
    centroid, spread = _triple(result.get("centroid_ras_mm")), _triple(result.get("spread_mm"))
    if not isinstance(volume, (int, float)) or volume <= 0 or centroid is None:
        return "No tumour found [research use only]"
    text = (f"Tumour volume {volume:.2f} mL; centroid R {centroid[0]:.1f}, A {centroid[1]:.1f}, "
            f"S {centroid[2]:.1f} mm")
    if spread is not None:
        text += f"; spread {spread[0]:.1f} x {spread[1]:.1f} x {spread[2]:.1f} mm (R x A x S)"
    return text + " [research use only]"
