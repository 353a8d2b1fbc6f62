"""The Qt-free half of a module widget's run: input nodes to files before ``meddl infer``, its outputs back to nodes.

A widget runs ``meddl infer <task>`` in a child process (:mod:`MedDLWidgets.runner`), so the scene and the
computation meet only through files:

1. :func:`new_run_folder` makes a private folder for one run; :func:`prepare_input` writes the input volume
   node(s) into it as NRRD (atomically, through :func:`MedDLLib.io.save_node`; the nodes are only read);
2. the child writes its outputs and ``result.json`` into ``<run>/output`` (the task's output contract, README);
3. :func:`load_outputs` reads ``result.json`` (:func:`read_result`), checks that every file the task promises
   is there, reads each file into arrays (:func:`read_output_data`; volume-like outputs must lie on the input
   node's voxel grid, or loading stops with an error naming the file) and hands them to
   :func:`add_output_nodes`, THE one function that makes a NEW node of the kind each :class:`OutputFile` names
   (scalar volume, heatmap (inferno, 0..1), labelmap, segmentation (reference geometry = the input node) or
   table) -- the console logic (``<Task>Logic.process``) calls it from memory. The values of ``result.json``
   become ``MedDL.*`` attributes of every new node.

The nodes keep no storage node pointing into the run folder, so saving the scene writes them beside the scene
(like nodes the logic creates in-process) and the run folder can be deleted at any time.

Everything here takes the scene and nodes explicitly; the same code serves Slicer's scene and a headless one.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, MedDLError
from .nodes import SegmentSpec, check_volume_node, removed_on_error

#: Name of the result file the shared ``meddl infer`` command writes (same as :data:`MedDLLib.batch.RESULT_JSON`).
RESULT_JSON = "result.json"
#: Node kinds an :class:`OutputFile` can become.
KINDS = ("volume", "heatmap", "labelmap", "segmentation", "table")
#: Geometry tolerance (mm) between an output and the input node's voxel grid (NRRD stores ~17 digits).
GEOMETRY_TOLERANCE_MM = 1e-3


@dataclasses.dataclass(frozen=True)
class OutputFile:
    """One file of a task's output folder and the node it becomes.

    Attributes:
        key: name of the node in :attr:`LoadedOutputs.nodes` (e.g. ``"heatmap"``).
        file: file name inside the output folder (e.g. ``"heatmap.nrrd"``).
        kind: one of :data:`KINDS`.
        name: node name, after the input node's name (``"<input> <name>"``).
        required: a missing required file is an error; an optional one (e.g. Grad-CAM when not asked) is skipped.
        segments: label value -> (name, colour) of a labelmap's colour table (``"labelmap"`` only; default:
            Slicer's generic colours).
        units: column -> unit label of a table (``"table"`` only).
        result_key: the ``result.json`` key that names this file (``""``: none), e.g. ``"segmentation"``.
        descriptions: column -> description of a table (``"table"`` only).
    """

    key: str
    file: str
    kind: str
    name: str
    required: bool = True
    segments: SegmentSpec | None = None
    units: Mapping[str, str] | None = None
    result_key: str = ""
    descriptions: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"output {self.file!r}: kind {self.kind!r} is not one of {KINDS}")
        if Path(self.file).name != self.file:
            raise ValueError(f"output {self.file!r}: give a file name inside the output folder, not a path")


@dataclasses.dataclass
class LoadedOutputs:
    """What :func:`load_outputs` added: the nodes by :attr:`OutputFile.key`, the ``result.json`` values, and
    the one-line summary a widget shows (filled by the task's ``widgetlogic.load_results``)."""

    folder: Path
    result: dict[str, Any]
    nodes: dict[str, Any]
    summary: str = ""


# ---------------------------------------------------------------------------------------------------- inputs
def new_run_folder(task: str, root: str | os.PathLike | None = None) -> Path:
    """A new, empty folder ``meddl-<task>-XXXX`` for one run (inside ``root``, default the system temp folder)."""
    if root is not None:
        Path(root).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"meddl-{task}-", dir=None if root is None else os.fspath(root)))


def _file_stem(text: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    return stem or "input"


def prepare_input(volume_nodes: Sequence[Any], folder: str | os.PathLike,
                  names: Sequence[str] | None = None) -> list[Path]:
    """Write each volume node to ``folder/<name>.nrrd`` for a ``meddl`` child process; return the paths.

    Args:
        volume_nodes: scalar volume nodes (in the order the task expects them).
        folder: where to write (created).
        names: file stems, one per node (default: the node names, made file-safe and unique).

    The nodes are only read: no storage node, attribute or voxel of theirs changes. Each file appears under its
    final name only once complete.

    Raises:
        InputError: a node is missing or not a usable image volume (:func:`MedDLLib.nodes.check_volume_node`).
    """
    from .io import save_node

    volume_nodes = list(volume_nodes)
    if names is not None and len(names) != len(volume_nodes):
        raise ValueError(f"{len(names)} names for {len(volume_nodes)} nodes")
    for index, node in enumerate(volume_nodes):
        if node is None:
            raise InputError(f"input {index + 1}: no volume selected")
        check_volume_node(node, labelmap=False)
    stems = list(names) if names is not None else [_file_stem(n.GetName()) for n in volume_nodes]
    if len(set(stems)) != len(stems):
        stems = [f"{index}_{stem}" for index, stem in enumerate(stems)]
    return [save_node(node, Path(folder) / f"{stem}.nrrd") for node, stem in zip(volume_nodes, stems)]


# ---------------------------------------------------------------------------------------------------- outputs
def read_result(folder: str | os.PathLike) -> dict[str, Any]:
    """The ``result.json`` of a finished run.

    Raises:
        MedDLError: the file is missing or not a JSON object, or it records an ``error`` (the run failed).
    """
    path = Path(folder) / RESULT_JSON
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise MedDLError(f"{path}: missing; the run wrote no result (see its log)") from exc
    except (OSError, ValueError) as exc:
        raise MedDLError(f"{path}: cannot read the run's result ({exc})") from exc
    if not isinstance(data, dict):
        raise MedDLError(f"{path}: expected a JSON object, got {type(data).__name__}")
    if data.get("error"):
        raise MedDLError(f"{path}: the run failed: {data['error']}")
    return data


def attribute_values(result: Mapping[str, Any]) -> dict[str, str]:
    """``result.json`` values as node attribute text: numbers and strings as is, lists space-separated, ``null``
    and ``NaN`` as ``"nan"``; nested objects as JSON."""

    def text(value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "nan"
        if isinstance(value, (list, tuple)):
            return " ".join(text(v) for v in value)
        if isinstance(value, Mapping):
            return json.dumps(value, sort_keys=True)
        return str(value)

    return {str(key): text(value) for key, value in result.items()}


def output_file(folder: Path, item: OutputFile, result: Mapping[str, Any]) -> Path:
    """Where ``item`` lies in a run folder: the file ``result.json`` names under :attr:`OutputFile.result_key`
    (e.g. ``heatmap.nii.gz`` of ``--output-format nifti``), else the declared :attr:`OutputFile.file`."""
    named = result.get(item.result_key) if item.result_key else None
    if isinstance(named, str) and named and Path(named).name == named and (folder / named).is_file():
        return folder / named
    return folder / item.file


def load_outputs(scene: Any, folder: str | os.PathLike, reference_node: Any, spec: Sequence[OutputFile],
                 *, attributes: bool = True) -> LoadedOutputs:
    """Add the outputs of a finished ``meddl infer`` run in ``folder`` to ``scene`` as new nodes.

    Each file is read into arrays (:func:`read_output_data`) and the nodes are made by
    :func:`add_output_nodes`, the same function the console logic uses from memory.

    Args:
        scene: the scene to add to (the reference node's scene).
        folder: the run's ``--output`` folder (holding ``result.json``).
        reference_node: the input volume node: names the new nodes, is the segmentations' reference geometry,
            and every volume-like output must lie on its voxel grid.
        spec: which file becomes which node (:class:`OutputFile`).
        attributes: store the ``result.json`` values as ``MedDL.*`` attributes of every new node (plus
            ``MedDL.input``, the reference node's ID).

    Returns:
        :class:`LoadedOutputs`.

    Raises:
        MedDLError: ``result.json`` is missing or records an error, required files are missing (all named in one
        message), a file cannot be read, or an output is not on the input's voxel grid. Every node added before
        the error (colour tables included) is removed again, so a failed load leaves the scene as it was.
    """
    folder = Path(folder)
    if reference_node is None or not reference_node.IsA("vtkMRMLScalarVolumeNode"):
        raise InputError("load_outputs needs the input volume node as reference")
    if scene is not reference_node.GetScene():
        raise InputError("load_outputs adds the outputs to the reference node's scene")
    result = read_result(folder)
    keys = [item.key for item in spec]
    if len(set(keys)) != len(keys):
        raise ValueError(f"output keys must be unique, got {keys}")
    files = {item.key: output_file(folder, item, result) for item in spec}
    missing = [item.file for item in spec if item.required and not files[item.key].is_file()]
    if missing:
        raise MedDLError(f"{folder}: the run did not write {', '.join(missing)}")
    data = {item.key: read_output_data(files[item.key], item, reference_node)
            for item in spec if files[item.key].is_file()}
    added = add_output_nodes(reference_node, spec, data, result, attributes=attributes)
    return LoadedOutputs(folder, result, added)


def add_output_nodes(reference_node: Any, spec: Sequence[OutputFile], data: Mapping[str, Any],
                     result: Mapping[str, Any] | None = None, *, attributes: bool = True) -> dict[str, Any]:
    """THE one way from a task's declared outputs to scene nodes: a new node for every :class:`OutputFile` of
    ``spec`` whose ``data`` is given, in the reference node's scene, beside it in the subject hierarchy.

    Used by the widgets after the child ends (:func:`load_outputs`: files -> arrays -> nodes) and by the
    console's ``<Task>Logic.process(node, ...)`` (from memory). The reference node is only read.

    Args:
        reference_node: the input volume node (names the nodes ``"<input> <OutputFile.name>"``; reference
            geometry of segmentations and labelmaps).
        spec: the task's outputs.
        data: :attr:`OutputFile.key` -> a :class:`~MedDLLib.geometry.Volume` (``heatmap``: inferno, 0..1;
            ``volume``), a label array ``[k, j, i]`` on the reference grid (``labelmap`` with its colour table,
            ``segmentation`` with one segment per entry of :attr:`OutputFile.segments`) or ``{column: values}``
            (``table``, with its units and descriptions). Missing or None entries are skipped.
        result: the ``result.json`` values; with ``attributes`` they become ``MedDL.*`` attributes of every new
            node, plus ``MedDL.input`` (the reference node's ID).

    Returns:
        the new nodes by :attr:`OutputFile.key`.

    Raises:
        InputError / MedDLError: data not on the reference grid or not what the kind needs; every node added
        before the error is removed again.
    """
    from . import nodes

    scene = reference_node.GetScene()
    base = reference_node.GetName()
    added: dict[str, Any] = {}
    with removed_on_error(scene):
        for item in spec:
            value = data.get(item.key)
            if value is None:
                continue
            name = f"{base} {item.name}"
            if item.kind == "heatmap":
                node = nodes.add_heatmap(scene, value.array, value.geometry, name)
            elif item.kind == "volume":
                node = nodes.add_scalar_volume(scene, value, name)
            elif item.kind == "labelmap":
                geometry = nodes.geometry_from_node(reference_node)
                if item.segments:
                    node = nodes.add_labelmap(scene, value, geometry, name, item.segments)
                else:
                    node = nodes.add_labelmap(scene, value, geometry, name,
                                              {int(v): (str(v), (1.0, 1.0, 0.0)) for v in np.unique(value) if v})
            elif item.kind == "segmentation":
                node = nodes.add_segmentation(scene, value, item.segments or {}, reference_node, name)
            else:
                node = nodes.add_table(scene, value, name, units=item.units, descriptions=item.descriptions)
            added[item.key] = node
        if attributes:
            values = attribute_values(result or {})
            for node in added.values():
                for key, text in values.items():
                    node.SetAttribute(nodes.ATTRIBUTE_PREFIX + key, text)
                node.SetAttribute(nodes.ATTRIBUTE_PREFIX + "input", reference_node.GetID())
        place_beside(reference_node, added.values())
    return added


def read_output_data(path: Path, item: OutputFile, reference_node: Any) -> Any:
    """The data of one output file (see :func:`add_output_nodes`), checked to lie on the reference node's grid.

    Raises:
        MedDLError: the file cannot be read, or is not on the input's voxel grid.
    """
    if item.kind == "table":
        return read_csv_columns(path)
    from .outputs import read_segmentation_labels

    try:
        if item.kind == "segmentation":
            volume, _ = read_segmentation_labels(path)
        else:
            from .io import read_volume_file

            volume = read_volume_file(path)
    except InputError as exc:
        raise MedDLError(str(exc)) from None
    _check_grid(volume, reference_node, path)
    if item.kind in ("labelmap", "segmentation"):
        return np.asarray(volume.array)
    if item.kind == "heatmap":
        array = np.asarray(volume.array, dtype=np.float32)
        if not np.isfinite(array).all() or array.min(initial=0) < 0 or array.max(initial=0) > 1:
            raise MedDLError(f"{path}: heatmap values must be finite and in [0, 1]")
    return volume


def place_beside(reference_node: Any, new_nodes: Iterable[Any]) -> None:
    """Put ``new_nodes`` under the reference node's parent in the subject hierarchy (its study), as Slicer users
    expect of results. Nothing happens when the reference node has no subject hierarchy item."""
    scene = reference_node.GetScene()
    hierarchy = scene.GetSubjectHierarchyNode() if scene is not None else None
    if hierarchy is None:
        return
    reference_item = hierarchy.GetItemByDataNode(reference_node)
    if not reference_item:
        return
    parent = hierarchy.GetItemParent(reference_item)
    for node in new_nodes:
        item = hierarchy.GetItemByDataNode(node)
        if item:
            hierarchy.SetItemParent(item, parent)
        else:
            hierarchy.CreateItem(parent, node)


def _check_grid(volume: Any, reference_node: Any, path: Path) -> None:
    from .nodes import geometry_from_node

    dims = tuple(reversed(volume.array.shape))
    ref_dims = tuple(reference_node.GetImageData().GetDimensions())
    if dims != ref_dims:
        raise MedDLError(f"{path}: {dims[0]} x {dims[1]} x {dims[2]} voxels, but the input "
                         f"{reference_node.GetName()!r} has {ref_dims[0]} x {ref_dims[1]} x {ref_dims[2]}")
    if not volume.geometry.allclose(geometry_from_node(reference_node), GEOMETRY_TOLERANCE_MM):
        raise MedDLError(f"{path}: not on the voxel grid of the input {reference_node.GetName()!r} "
                         "(origin, spacing or directions differ)")


def _number(text: str) -> int | float | None:
    text = text.strip()
    if text.lower() in ("", "nan", "none", "null"):
        return math.nan
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return None


def read_csv_columns(path: str | os.PathLike) -> dict[str, list[Any]]:
    """A CSV file with a header row as ``{column: values}``: a column whose cells all read as numbers becomes
    ints (all integers) or floats (empty cells and ``nan`` as NaN), any other column stays text.

    Raises:
        MedDLError: no header, or rows of different lengths (names the file and line).
    """
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows or not rows[0]:
        raise MedDLError(f"{path}: empty table (no header row)")
    header, body = rows[0], rows[1:]
    for line, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise MedDLError(f"{path}:{line}: {len(row)} cells, the header has {len(header)}")
    columns: dict[str, list[Any]] = {}
    for c, column in enumerate(header):
        cells = [row[c] for row in body]
        numbers = [_number(cell) for cell in cells]
        if cells and all(n is not None for n in numbers):
            if all(isinstance(n, int) for n in numbers):
                columns[column] = numbers
            else:
                columns[column] = [float(n) for n in numbers]
        else:
            columns[column] = cells
    return columns
