"""What the Lung Survival widget needs beyond the shared :mod:`MedDLLib.results` (Qt-free, tested in pytest).

* :func:`infer_arguments`: the ``meddl infer lung`` command line for the widget's choices (Testing/
  test_lung_widget.py parses it with the task's own argument parser);
* :data:`OUTPUTS` and :func:`load_results`: which output file becomes which node (lung segmentation with the
  right/left lung segments, lung labelmap, Grad-CAM heatmap, lung volumes table);
* :func:`summary_text`: the line the widget shows (volumes, risk score and group, the model card's caveat).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from MedDLLib.errors import MedDLError
from MedDLLib.nodes import removed_on_error
from MedDLLib.options import infer_command
from MedDLLib.results import LoadedOutputs, load_outputs

from . import logic, options

#: The task name of ``meddl infer``.
TASK = "lung"
#: ``module:attribute`` of the task object the child process registers (Slicer has no entry points).
TASK_ENTRY = "LungSurvivalLib.cli:TASK"
#: Output file -> node of a finished ``meddl infer lung`` run.
OUTPUTS = logic.OUTPUTS  # declared once, with the task (MedDLLib.pipeline)


def infer_arguments(input_file: str | os.PathLike, model: str, output: str | os.PathLike, **values: Any) -> list[str]:
    """The ``meddl`` arguments of one run: ``infer lung --input F --model M --output D [--force-cpu]``.

    Raises:
        InputError: no model selected.
    """
    return infer_command(TASK, input_file, model, output, options.INFER, values)



def load_results(folder: str | os.PathLike, input_node: Any) -> LoadedOutputs:
    """Add the outputs of a finished run to the input node's scene (:data:`OUTPUTS`); ``summary`` is
    :func:`summary_text` of ``result.json``."""
    with removed_on_error(input_node.GetScene()) as scene:
        loaded = load_outputs(scene, Path(folder), input_node, OUTPUTS)
        loaded.summary = summary_text(loaded.result)
    return loaded


def summary_text(result: dict[str, Any]) -> str:
    """``Right lung R mL, left lung L mL (total T mL). [Lobes: right upper lobe U mL, ....] Risk score S (HIGH|low risk vs the training cohort).
    <caveat>``.

    Raises:
        MedDLError: ``result.json`` lacks the lung volumes, the risk or the caveat (not a lung result).
    """
    try:
        right, left = float(result["right_lung_ml"]), float(result["left_lung_ml"])
        risk, group, caveat = float(result["risk_score"]), str(result["risk_group"]), str(result["caveat"])
    except (KeyError, TypeError, ValueError) as exc:
        raise MedDLError(f"result.json is not the output of 'meddl infer lung' (missing or bad {exc})") from exc
    if group not in ("low", "high") or not all(math.isfinite(v) for v in (right, left, risk)):
        raise MedDLError(f"result.json has an invalid lung result (risk group {group!r}, risk {risk})")
    lobes = result.get("lobe_volumes_ml") or {}
    lobe_text = ("Lobes: " + ", ".join(f"{name.lower()} {float(ml):.0f} mL" for name, ml in lobes.items()) + ". "
                 if isinstance(lobes, dict) and lobes else "")
    return (f"Right lung {right:.0f} mL, left lung {left:.0f} mL (total {right + left:.0f} mL). {lobe_text}"
            f"Risk score {risk:.3f}: {group} risk relative to the training cohort. {caveat}")
