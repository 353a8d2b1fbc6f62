"""What the Glioma Classifier widget needs beyond the shared :mod:`MedDLLib.results` (Qt-free, tested in pytest).

* :func:`model_sequences` and :func:`input_nodes`: which of the selected sequence nodes the chosen model needs
  (its metadata's input channels, in channel order; the first is the reference grid);
* :func:`infer_arguments`: the ``meddl infer glioma`` command line for the widget's choices; its ``--input`` is a
  folder of ``<sequence>.nrrd`` files (:func:`GliomaClassifierLib.cli.read_study`), written by
  :func:`MedDLLib.results.prepare_input` with ``names`` = the sequences (Testing/test_glioma_widget.py parses
  the command line with the task's own argument parser); its ``voi_dicom`` (from
  :func:`MedDLLib.nodes.dicom_source_files`) names the DICOM file of nodes loaded through Slicer's DICOM module,
  so the child applies their VOI LUT (NRRD has no DICOM header);
* :data:`OUTPUTS` and :func:`load_results`: the Grad-CAM heatmap file becomes a heatmap node on the reference
  sequence's grid; the result table and the markups ROI of the slice window are rebuilt from ``result.json`` by
  the same :meth:`GliomaClassifierLib.logic.GliomaClassifierLogic.write_outputs` the in-process logic uses;
* :func:`model_caveat` and :func:`summary_text`: the model card caveat shown under the model selector and the
  text the widget shows after a run (probability, call, model card with its near-chance caveat, warnings).

Nothing here imports torch at import time (the widget imports this module before the dependencies are checked).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from MedDLLib.errors import InputError, MedDLError
from MedDLLib.nodes import removed_on_error
from MedDLLib.options import infer_command
from MedDLLib.results import LoadedOutputs, attribute_values, load_outputs, place_beside

from . import logic, options
from .dataset import SEQUENCES

#: The task name of ``meddl infer``.
TASK = "glioma"
#: ``module:attribute`` of the task object the child process registers (Slicer has no entry points).
TASK_ENTRY = "GliomaClassifierLib.cli:TASK"
#: Output file -> node of a finished ``meddl infer glioma`` run (the table and window ROI come from result.json).
OUTPUTS = logic.OUTPUTS  # declared once, with the task (MedDLLib.pipeline)
#: ``result.json`` keys :func:`load_results` needs.
RESULT_KEYS = ("probability", "methylated", "threshold", "model", "recipe", "sequences", "model_card",
               "window_first_slice", "window_last_slice", "window_centre_slice", "window_depth",
               "n_slices_oriented", "window_centre_ras_mm", "window_size_mm", "window_axes_ras", "summary")


def model_sequences(model: str | os.PathLike) -> list[str]:
    """The sequences a glioma model needs, in its channel order (the first is the reference), read from the
    package metadata only (no weights are loaded).

    Raises:
        InputError: the model is for another task, or its metadata has no usable input section.
        ModelError: the model is not in the cache / not a package.
    """
    from MedDLLib import models

    from .preprocess import InputSpec

    metadata = models.read_metadata(model)
    if metadata.get("task") != TASK:
        raise InputError(f"model {str(model)!r} is for task {metadata.get('task')!r}, not {TASK!r}")
    return list(InputSpec.from_metadata(metadata.get("input") or {}).sequences)


def input_nodes(sequences: Sequence[str], selected: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """``(sequence, node)`` for each sequence the model needs, in the model's order, from the widget's
    ``{sequence: node or None}`` choices (sequences the model does not use are left out).

    Raises:
        InputError: a needed sequence has no node selected (names all of them), or a name is not a sequence.
    """
    unknown = [s for s in list(sequences) + list(selected) if s not in SEQUENCES]
    if unknown:
        raise InputError(f"unknown sequence name(s) {', '.join(map(str, unknown))}; expected {', '.join(SEQUENCES)}")
    missing = [s for s in sequences if selected.get(s) is None]
    if missing:
        raise InputError(f"the model needs {', '.join(sequences)}: select a volume for {', '.join(missing)}")
    return [(s, selected[s]) for s in sequences]


def infer_arguments(input_folder: str | os.PathLike, model: str, output: str | os.PathLike, *,
                    voi_dicom: Mapping[str, str | os.PathLike] | None = None, **values: Any) -> list[str]:
    """The ``meddl`` arguments of one run: ``infer glioma --input DIR --model M --output D`` and the options of
    :data:`GliomaClassifierLib.options.INFER` given in ``values`` (``threshold``, ``force_cpu``), then
    ``--voi-dicom SEQUENCE=FILE ...``; ``DIR`` holds one ``<sequence>.nrrd`` per sequence the model needs;
    ``voi_dicom`` names, per sequence, a DICOM file of the series its node was loaded from
    (:func:`MedDLLib.nodes.dicom_source_files`), so the child applies the VOI LUT as when reading the files.

    Raises:
        InputError: no model selected, or a threshold outside the option's range.
    """
    arguments = infer_command(TASK, input_folder, model, output, options.INFER, values)
    for sequence, file in (voi_dicom or {}).items():
        arguments += ["--voi-dicom", f"{sequence}={os.fspath(file)}"]
    return arguments



def result_from_json(result: Mapping[str, Any]) -> Any:
    """A :class:`GliomaClassifierLib.logic.GliomaResult` (without heatmap) from a ``result.json``.

    Raises:
        MedDLError: keys are missing or values invalid (not the output of ``meddl infer glioma``).
    """
    import numpy as np

    from .logic import GliomaResult

    missing = [k for k in RESULT_KEYS if k not in result]
    if missing:
        raise MedDLError(f"result.json is not the output of 'meddl infer glioma' (missing {', '.join(missing)})")
    try:
        probability = float(result["probability"])
        centre = np.asarray(result["window_centre_ras_mm"], dtype=float)
        size = np.asarray(result["window_size_mm"], dtype=float)
        axes = np.asarray(result["window_axes_ras"], dtype=float)
        window = {"first": int(result["window_first_slice"]), "last": int(result["window_last_slice"]),
                  "centre": int(result["window_centre_slice"]), "depth": int(result["window_depth"]),
                  "n_slices": int(result["n_slices_oriented"]), "centre_ras_mm": centre.tolist(),
                  "size_mm": size.tolist(), "axes_ras": axes.tolist()}
        out = GliomaResult(probability, float(result["threshold"]), str(result["model"]), str(result["recipe"]),
                           [str(s) for s in result["sequences"]], str(result["model_card"]), window, None,
                           [str(w) for w in result.get("warnings") or []])
    except (TypeError, ValueError) as exc:
        raise MedDLError(f"result.json has an invalid glioma result ({exc})") from exc
    box_ok = (centre.shape == (3,) and size.shape == (3,) and axes.shape == (3, 3)
              and np.all(np.isfinite(centre)) and np.all(size > 0)
              and np.allclose(axes @ axes.T, np.eye(3), atol=1e-4) and np.linalg.det(axes) > 0)
    if not (0.0 <= probability <= 1.0) or not box_ok or window["last"] < window["first"]:
        raise MedDLError(f"result.json has an invalid glioma result (probability {probability}, window centre "
                         f"{centre.tolist()}, size {size.tolist()}, axes {axes.tolist()}, slices "
                         f"{window['first']}..{window['last']})")
    return out


def load_results(folder: str | os.PathLike, reference_node: Any) -> LoadedOutputs:
    """Add the outputs of a finished run to the reference node's scene.

    Args:
        folder: the run's ``--output`` folder.
        reference_node: the node of the model's first sequence (the heatmap lies on its grid).

    Returns:
        :class:`MedDLLib.results.LoadedOutputs` with ``nodes``: ``heatmap`` (0..1), ``table`` (quantity/value:
        probability, call, window slices, model card) and ``window`` (markups ROI of the slice window, RAS), each
        carrying the ``result.json`` values as ``MedDL.*`` attributes; ``summary`` is :func:`summary_text`.

    Raises:
        MedDLError: see :func:`MedDLLib.results.load_outputs` and :func:`result_from_json`; nothing is added then.
    """
    from MedDLLib.nodes import ATTRIBUTE_PREFIX

    from .logic import GliomaClassifierLogic

    scene = reference_node.GetScene()
    with removed_on_error(scene):
        loaded = load_outputs(scene, Path(folder), reference_node, OUTPUTS)
        glioma = result_from_json(loaded.result)
        summary = summary_text(loaded.result)
        written = GliomaClassifierLogic().write_outputs(reference_node, glioma).nodes
        loaded.nodes.update({key: written[key] for key in ("table", "window")})
        values = attribute_values(loaded.result)
        for key in ("table", "window"):
            for name, value in values.items():
                written[key].SetAttribute(ATTRIBUTE_PREFIX + name, value)
            written[key].SetAttribute(ATTRIBUTE_PREFIX + "input", reference_node.GetID())
        place_beside(reference_node, [written["table"], written["window"]])
    loaded.summary = summary
    return loaded


def summary_text(result: Mapping[str, Any]) -> str:
    """``Probability of MGMT promoter methylation P (methylated|unmethylated at threshold T) from SEQUENCES.
    <model card, ending with its caveat>`` plus ``Warnings: ...`` when the run had any.

    Raises:
        MedDLError: ``result.json`` lacks the probability, threshold, sequences or model card, or they are invalid.
    """
    try:
        probability, threshold = float(result["probability"]), float(result["threshold"])
        sequences, card = [str(s) for s in result["sequences"]], str(result["model_card"])
    except (KeyError, TypeError, ValueError) as exc:
        raise MedDLError(f"result.json is not the output of 'meddl infer glioma' (missing or bad {exc})") from exc
    if not (math.isfinite(probability) and 0.0 <= probability <= 1.0) or not card:
        raise MedDLError(f"result.json has an invalid glioma result (probability {probability}, model card {card!r})")
    call = "methylated" if probability >= threshold else "unmethylated"
    text = (f"Probability of MGMT promoter methylation {probability:.2f} ({call} at threshold {threshold:g}) "
            f"from {', '.join(sequences)}.\n\n{card}")
    warnings = [str(w) for w in result.get("warnings") or []]
    if warnings:
        text += "\n\nWarnings: " + "; ".join(warnings)
    return text


def model_caveat(model: str | os.PathLike | None) -> str:
    """The caveat shown under the model selector: the glioma model card of ``model`` (what it was trained on,
    its measured AUROC, near chance on external data) or, with no usable model, the task's caveat."""
    from MedDLLib import models

    metadata = None
    if model:
        try:
            metadata = models.read_metadata(model)
        except MedDLError:
            metadata = None
    try:
        from .card import CAVEAT, model_card
    except ImportError:  # torch not installed yet: the package's own caveat text
        output = (metadata or {}).get("output") or {}
        return str(output.get("caveat") or "Research use only. MGMT status from MRI is close to chance on "
                                            "external data.")
    if metadata is None or metadata.get("task") != TASK:
        return CAVEAT
    return model_card(metadata)
