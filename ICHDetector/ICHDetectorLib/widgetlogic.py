"""What the ICH Detector widget needs beyond the shared :mod:`MedDLLib.results` (Qt-free, tested in pytest).

* :func:`infer_arguments`: the ``meddl infer ich`` command line for the widget's choices (Testing/test_widgets.py
  parses it with the task's own argument parser);
* :data:`OUTPUTS` and :func:`load_results`: which output file becomes which node (heatmap, suspected-region
  segmentation, per-slice probability table) plus the per-slice plot chart;
* :func:`summary_text`: the line the widget shows.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from MedDLLib.errors import MedDLError
from MedDLLib.options import infer_command
from MedDLLib.results import LoadedOutputs, load_outputs

from . import logic, options
from .dataset import LABELS
from .logic import PLOT_NAME

#: The task name of ``meddl infer``.
TASK = "ich"
#: ``module:attribute`` of the task object the child process registers (Slicer has no entry points).
TASK_ENTRY = "ICHDetectorLib.cli:TASK"
#: Labels Grad-CAM can explain (the widget's heatmap label choices), "any" first: the option's choices.
HEATMAP_LABELS = options.HEATMAP_LABELS
#: Output file -> node of a finished ``meddl infer ich`` run.
OUTPUTS = logic.OUTPUTS  # declared once, with the task (MedDLLib.pipeline)


def infer_arguments(input_file: str | os.PathLike, model: str, output: str | os.PathLike, **values: Any) -> list[str]:
    """The ``meddl`` arguments of one run: ``infer ich --input F --model M --output D`` and the options of
    :data:`ICHDetectorLib.options.INFER` given in ``values`` (``heatmap_label``, ``threshold``, ``force_cpu``).

    Raises:
        InputError: no model, or a value the option does not allow (e.g. a heatmap label not in
            :data:`HEATMAP_LABELS`).
    """
    return infer_command(TASK, input_file, model, output, options.INFER, values)



def load_results(folder: str | os.PathLike, input_node: Any) -> LoadedOutputs:
    """Add the outputs of a finished run to the input node's scene (:data:`OUTPUTS`) plus ``nodes["plot"]``, a
    plot chart of the six probabilities against the slice index; ``summary`` is :func:`summary_text`."""
    from MedDLLib import nodes

    with nodes.removed_on_error(input_node.GetScene()) as scene:
        loaded = load_outputs(scene, Path(folder), input_node, OUTPUTS)
        loaded.nodes["plot"] = logic.probability_plot(input_node, loaded.nodes["table"])
        loaded.summary = summary_text(loaded.result)
    return loaded


def summary_text(result: dict[str, Any]) -> str:
    """The study-level line the task writes into ``result.json`` (it ends with "research use only").

    Raises:
        MedDLError: ``result.json`` has no summary (not an ICH result).
    """
    summary = result.get("summary")
    if not isinstance(summary, str) or not summary:
        raise MedDLError("result.json has no 'summary': not the output of 'meddl infer ich'")
    return summary
