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
from MedDLLib.results import LoadedOutputs, OutputFile, load_outputs

from .cli import HEATMAP_NRRD, PROBABILITIES_CSV, SUSPECTED_SEG
from .dataset import LABELS
from .logic import PLOT_NAME

#: The task name of ``meddl infer``.
TASK = "ich"
#: ``module:attribute`` of the task object the child process registers (Slicer has no entry points).
TASK_ENTRY = "ICHDetectorLib.cli:TASK"
#: Labels Grad-CAM can explain (the widget's heatmap label choices), "any" first.
HEATMAP_LABELS = tuple(LABELS)
#: Output file -> node of a finished ``meddl infer ich`` run.
OUTPUTS = (
    OutputFile("heatmap", HEATMAP_NRRD, "heatmap", "ICH Grad-CAM"),
    OutputFile("segmentation", SUSPECTED_SEG, "segmentation", "suspected hemorrhage"),
    OutputFile("table", PROBABILITIES_CSV, "table", "ICH probabilities"),
)


def infer_arguments(input_file: str | os.PathLike, model: str, output: str | os.PathLike, *,
                    heatmap_label: str = "any", threshold: float = 0.5, force_cpu: bool = False) -> list[str]:
    """The ``meddl`` arguments of one run: ``infer ich --input F --model M --output D --heatmap-label L
    --threshold T [--force-cpu]``.

    Raises:
        ValueError: no model, or a heatmap label that is not one of :data:`HEATMAP_LABELS`.
    """
    if not model:
        raise ValueError("no ICH model selected: train one with 'meddl train ich' or import a model package")
    if heatmap_label not in HEATMAP_LABELS:
        raise ValueError(f"heatmap label {heatmap_label!r} is not one of {', '.join(HEATMAP_LABELS)}")
    arguments = ["infer", TASK, "--input", os.fspath(input_file), "--model", str(model),
                 "--output", os.fspath(output), "--heatmap-label", heatmap_label, "--threshold", repr(float(threshold))]
    if force_cpu:
        arguments.append("--force-cpu")
    return arguments


def load_results(folder: str | os.PathLike, input_node: Any) -> LoadedOutputs:
    """Add the outputs of a finished run to the input node's scene (:data:`OUTPUTS`) plus ``nodes["plot"]``, a
    plot chart of the six probabilities against the slice index; ``summary`` is :func:`summary_text`."""
    from MedDLLib import nodes

    with nodes.removed_on_error(input_node.GetScene()) as scene:
        loaded = load_outputs(scene, Path(folder), input_node, OUTPUTS)
        loaded.nodes["plot"] = nodes.add_plot(scene, loaded.nodes["table"], "slice", list(LABELS),
                                              f"{input_node.GetName()} {PLOT_NAME}", x_title="slice index (k)",
                                              y_title="probability")
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
