"""MRML adapters: volume nodes <-> :class:`~MedDLLib.geometry.Volume`, and the output nodes MedDL creates.

This is the edge between the scene and the array world. Every function takes the scene (or a node) explicitly
and never reads ``slicer.mrmlScene``. Input nodes are only read; every output is a new node.

Geometry goes through :class:`~MedDLLib.geometry.Geometry` only: ``Geometry.ijk_to_ras()`` is what a node's
IJKToRAS matrix is set from and ``Geometry.from_ijk_to_ras`` is how it is read back.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from .errors import InputError
from .geometry import Geometry, Volume

#: label value -> (segment name, (r, g, b) in 0..1)
SegmentSpec = Mapping[int, tuple[str, tuple[float, float, float]]]

#: Node attribute prefix for values MedDL stores on its output nodes (e.g. "MedDL.probability").
ATTRIBUTE_PREFIX = "MedDL."


def _slicer():
    import slicer

    return slicer


def vtk_matrix(matrix: np.ndarray) -> Any:
    """A ``vtkMatrix4x4`` with the values of a 4 x 4 array (e.g. an IJK-to-RAS or object-to-RAS matrix)."""
    from vtkmodules.vtkCommonMath import vtkMatrix4x4

    m = vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(matrix[r, c]))
    return m


def _numpy_matrix(vtk_matrix) -> np.ndarray:
    return np.array([[vtk_matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _node_ids(scene: Any) -> set[str]:
    return {scene.GetNthNode(index).GetID() for index in range(scene.GetNumberOfNodes())}


def _remove_nodes_added_since(scene: Any, before: set[str]) -> None:
    """Remove every node added to ``scene`` since the snapshot ``before`` (display, storage and colour nodes
    included), newest first; singletons (e.g. the subject hierarchy) stay."""
    added = [scene.GetNthNode(index) for index in range(scene.GetNumberOfNodes())]
    for node in reversed([n for n in added if n.GetID() not in before and not n.IsSingleton()]):
        if scene.IsNodePresent(node):
            scene.RemoveNode(node)


@contextlib.contextmanager
def temporary_nodes(scene: Any) -> Iterator[Any]:
    """Every node added to ``scene`` inside the block is removed when the block ends (also on error)."""
    before = _node_ids(scene)
    try:
        yield scene
    finally:
        _remove_nodes_added_since(scene, before)


@contextlib.contextmanager
def removed_on_error(scene: Any) -> Iterator[Any]:
    """Every node added to ``scene`` inside the block is removed again if the block raises: the scene is left
    as it was (what the logic adds on success stays)."""
    before = _node_ids(scene)
    try:
        yield scene
    except BaseException:
        _remove_nodes_added_since(scene, before)
        raise


def geometry_from_node(node: Any) -> Geometry:
    """The :class:`Geometry` of a volume node (from its IJKToRAS matrix; parent transforms are not applied)."""
    from vtkmodules.vtkCommonMath import vtkMatrix4x4

    m = vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return Geometry.from_ijk_to_ras(_numpy_matrix(m))


def set_node_geometry(node: Any, geometry: Geometry) -> None:
    """Place ``node``'s voxel grid at ``geometry`` (sets IJKToRAS, i.e. origin, spacing and directions)."""
    node.SetIJKToRASMatrix(vtk_matrix(geometry.ijk_to_ras()))


def check_volume_node(node: Any, *, labelmap: bool = True) -> None:
    """Raise a clear :class:`InputError` unless ``node`` is a 3D single-component volume node MedDL can read.

    Refused: no node; a node that is not a scalar volume; a vector (e.g. RGB) or tensor volume; a labelmap when
    ``labelmap`` is False (the image input of a network); a node without voxels; a node under a transform; a
    sheared voxel grid (IJK-to-RAS not a rotation times spacing, e.g. gantry tilt kept as a shear).
    """
    if node is None:
        raise InputError("no volume node given")
    name = node.GetName()
    if not node.IsA("vtkMRMLScalarVolumeNode"):
        raise InputError(f"{name!r} is a {node.GetClassName()}, not a scalar volume node")
    image = node.GetImageData()
    components = image.GetNumberOfScalarComponents() if image is not None else 1
    if node.IsA("vtkMRMLVectorVolumeNode") or node.IsA("vtkMRMLTensorVolumeNode") or components != 1:
        raise InputError(f"{name!r} is a {node.GetClassName()} with {components} values per voxel (e.g. RGB): "
                         "choose a grey-value volume, or convert it first (Vector to Scalar Volume module)")
    if not labelmap and node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InputError(f"{name!r} is a labelmap (segment labels), not an image: choose the image volume")
    if image is None or min(image.GetDimensions()) < 1 or image.GetPointData().GetScalars() is None:
        raise InputError(f"volume node {name!r} has no voxels")
    if node.GetParentTransformNode() is not None:
        raise InputError(
            f"volume node {name!r} is under a transform: harden the transform first "
            "(Data module, right-click, Harden transform) so its voxel geometry is what is shown"
        )
    try:
        geometry_from_node(node)
    except ValueError as exc:
        raise InputError(f"volume node {name!r} has a sheared voxel grid ({exc}): resample it onto a regular grid "
                         "first (e.g. Resample Scalar/Vector/DWI Volume)") from exc


def volume_from_node(node: Any, *, labelmap: bool = True) -> Volume:
    """A :class:`Volume` copy of a scalar (or labelmap) volume node: ``array[k, j, i]``, geometry, attributes.

    Args:
        labelmap: accept a labelmap node (False for the image input of a network).
    Raises:
        InputError: see :func:`check_volume_node`.
    """
    slicer = _slicer()
    check_volume_node(node, labelmap=labelmap)
    array = np.array(slicer.util.arrayFromVolume(node), copy=True)
    metadata = {"name": node.GetName(), "node_id": node.GetID()}
    for key in node.GetAttributeNames() or ():
        metadata[key] = node.GetAttribute(key)
    for key in ("DICOM.Modality", "DICOM.SeriesDescription"):
        if node.GetAttribute(key):
            metadata[key.split(".", 1)[1].lower()] = node.GetAttribute(key)
    return Volume(array, geometry_from_node(node), metadata)


def dicom_source_file(node: Any, file_for_instance: Callable[[str], str | None] | None) -> str | None:
    """The first DICOM file a volume node was loaded from, or None when that is not known.

    Slicer's DICOM module stores the SOP Instance UIDs of a loaded series in the node attribute
    ``DICOM.instanceUIDs`` (space-separated); ``file_for_instance`` maps a UID to its file (in Slicer:
    ``slicer.dicomDatabase.fileForInstance``). The file's header carries what the voxels lost, e.g. the VOI LUT.
    """
    uids = (node.GetAttribute("DICOM.instanceUIDs") or "").split() if node is not None else []
    if not uids or file_for_instance is None:
        return None
    path = file_for_instance(uids[0])
    return str(path) if path and os.path.isfile(path) else None


def dicom_source_files(named_nodes: Mapping[str, Any],
                       file_for_instance: Callable[[str], str | None] | None) -> dict[str, str]:
    """``{name: first DICOM file}`` of the nodes of ``{name: node}`` whose file :func:`dicom_source_file` finds;
    nodes of other origins are left out."""
    found = {name: dicom_source_file(node, file_for_instance) for name, node in named_nodes.items()}
    return {name: path for name, path in found.items() if path}


def _add_volume_node(scene: Any, class_name: str, array: np.ndarray, geometry: Geometry, name: str,
                     *, display: bool = True) -> Any:
    slicer = _slicer()
    if array.ndim != 3:
        raise InputError(f"{name}: expected a 3D array [k, j, i], got shape {array.shape}")
    node = scene.AddNewNodeByClass(class_name, scene.GenerateUniqueName(name))
    set_node_geometry(node, geometry)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array))
    if display:
        node.CreateDefaultDisplayNodes()
    return node


def set_attributes(node: Any, values: Mapping[str, Any]) -> None:
    """Store ``values`` as node attributes ``MedDL.<key>`` (numbers and strings as text)."""
    for key, value in values.items():
        node.SetAttribute(ATTRIBUTE_PREFIX + key, str(value))


def add_scalar_volume(
    scene: Any, volume: Volume, name: str, *, window: tuple[float, float] | None = None
) -> Any:
    """A new ``vtkMRMLScalarVolumeNode`` holding ``volume`` (array copied, geometry from ``volume.geometry``).

    ``window`` is (centre, width) in the volume's units; by default the first DICOM window of the metadata
    is used when present, else Slicer's automatic window/level. DICOM metadata (modality, series
    description, UIDs) become ``DICOM.*`` node attributes as Slicer's DICOM plugin does.
    """
    node = _add_volume_node(scene, "vtkMRMLScalarVolumeNode", volume.array, volume.geometry, name)
    md = volume.metadata
    for attr, key in (("DICOM.Modality", "modality"), ("DICOM.SeriesDescription", "series_description"),
                      ("DICOM.instanceUIDs", "instance_uids"), ("DICOM.SeriesInstanceUID", "series_uid"),
                      ("DICOM.StudyInstanceUID", "study_uid"), ("DICOM.PatientID", "patient_id")):
        value = md.get(key)
        if value:
            node.SetAttribute(attr, " ".join(value) if isinstance(value, (list, tuple)) else str(value))
    if md.get("warnings"):
        set_attributes(node, {"warnings": " | ".join(md["warnings"])})
    if window is None and md.get("window_center") and md.get("window_width"):
        centre, width = md["window_center"], md["window_width"]
        window = (float(np.ravel(centre)[0]), float(np.ravel(width)[0]))
    display = node.GetDisplayNode()
    if window is not None and display is not None:
        display.AutoWindowLevelOff()
        display.SetWindowLevel(float(window[1]), float(window[0]))
    return node


def add_color_table(scene: Any, name: str, segments: SegmentSpec) -> Any:
    """A user colour table node: entry 0 is transparent background, entry v is ``segments[v]``."""
    table = scene.AddNewNodeByClass("vtkMRMLColorTableNode", scene.GenerateUniqueName(name))
    table.SetTypeToUser()
    table.SetNumberOfColors(int(max(segments, default=0)) + 1)
    table.SetColor(0, "background", 0.0, 0.0, 0.0, 0.0)
    for value, (seg_name, rgb) in segments.items():
        if value <= 0:
            raise InputError(f"segment label values must be >= 1, got {value} for {seg_name!r}")
        table.SetColor(int(value), seg_name, *map(float, rgb), 1.0)
    return table


def _check_labels(labels: np.ndarray, segments: SegmentSpec, name: str) -> np.ndarray:
    from .outputs import check_labels

    return check_labels(labels, segments, name)


def add_labelmap(scene: Any, labels: np.ndarray, geometry: Geometry, name: str, segments: SegmentSpec) -> Any:
    """A new ``vtkMRMLLabelMapVolumeNode`` with its own colour table (names and colours from ``segments``)."""
    labels = _check_labels(labels, segments, name)
    node = _add_volume_node(scene, "vtkMRMLLabelMapVolumeNode", labels, geometry, name)
    node.GetDisplayNode().SetAndObserveColorNodeID(add_color_table(scene, f"{name}_colors", segments).GetID())
    return node


def add_segmentation(
    scene: Any, labels: np.ndarray, segments: SegmentSpec, reference_node: Any, name: str
) -> Any:
    """A new ``vtkMRMLSegmentationNode`` from a label array on ``reference_node``'s voxel grid.

    ``labels[k, j, i]`` has the shape of the reference volume; value v becomes the segment named
    ``segments[v][0]`` with colour ``segments[v][1]`` (every segment is created, even if empty). The
    reference volume is set as the segmentation's reference geometry (so DICOM SEG export works) and is
    not modified.
    """
    slicer = _slicer()
    reference = geometry_from_node(reference_node)
    ref_shape = tuple(reversed(reference_node.GetImageData().GetDimensions()))
    labels = _check_labels(labels, segments, name)
    if labels.shape != ref_shape:
        raise InputError(f"{name}: label array shape {labels.shape} differs from the reference volume's {ref_shape}")
    seg_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(name))
    seg_node.CreateDefaultDisplayNodes()
    seg_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_node)
    segmentation = seg_node.GetSegmentation()
    for value, (seg_name, rgb) in sorted(segments.items()):
        segment_id = segmentation.AddEmptySegment(seg_name, seg_name, tuple(map(float, rgb)))
        # Imported even when empty: the segment then still carries the reference grid, so an all-empty
        # segmentation is saved in the input geometry instead of a 1x1x1 grid at the origin.
        mask = (labels == value).astype(np.uint8)
        with temporary_nodes(scene):
            tmp = _add_volume_node(scene, "vtkMRMLLabelMapVolumeNode", mask, reference, "tmp_mask", display=False)
            ids = _string_array([segment_id])
            ok = slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(tmp, seg_node, ids)
        if not ok:
            raise RuntimeError(f"{name}: could not import segment {seg_name!r}")
    segmentation.CollapseBinaryLabelmaps()
    from .terminology import apply_to_segmentation

    apply_to_segmentation(seg_node)  # SNOMED category/type of known segment names (Slicer's TerminologyEntry)
    return seg_node


def _string_array(values: Sequence[str]):
    from vtkmodules.vtkCommonCore import vtkStringArray

    arr = vtkStringArray()
    for v in values:
        arr.InsertNextValue(v)
    return arr


def segment_array(seg_node: Any, segment_name: str, reference_node: Any) -> np.ndarray:
    """Binary ``uint8`` array ``[k, j, i]`` of segment ``segment_name`` on ``reference_node``'s grid."""
    slicer = _slicer()
    segment_id = seg_node.GetSegmentation().GetSegmentIdBySegmentName(segment_name)
    if not segment_id:
        raise InputError(f"segmentation {seg_node.GetName()!r} has no segment named {segment_name!r}")
    with temporary_nodes(seg_node.GetScene()) as scene:
        lab = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            seg_node, _string_array([segment_id]), lab, reference_node
        )
        if not ok:
            raise RuntimeError(f"could not export segment {segment_name!r}")
        return (np.array(slicer.util.arrayFromVolume(lab)) > 0).astype(np.uint8)


HEATMAP_COLOR_TABLE = "MedDL Heatmap (inferno)"


def heatmap_color_table(scene: Any) -> Any:
    """The 256-entry inferno colour table MedDL uses for heatmaps (created once per scene).

    Slicer ships ``Inferno`` as a colour file; the PyPI wheel lacks it, so it is built from
    :data:`MedDLLib.colormap.INFERNO` (the same colours, those of ``overlay.png``) when no node of that name exists.
    """
    from .colormap import INFERNO

    existing = scene.GetFirstNodeByName(HEATMAP_COLOR_TABLE)
    if existing is not None:
        return existing
    table = scene.AddNewNodeByClass("vtkMRMLColorTableNode", HEATMAP_COLOR_TABLE)
    table.SetTypeToUser()
    table.SetNumberOfColors(256)
    for i, (r, g, b) in enumerate(INFERNO):
        table.SetColor(i, str(i), float(r), float(g), float(b), 1.0)
    return table


def add_heatmap(
    scene: Any, heatmap: np.ndarray, geometry: Geometry, name: str, *, threshold: float = 0.2
) -> Any:
    """A new float volume node with values in [0, 1], shown with the inferno table, hiding values < threshold.

    Raises:
        InputError: values outside [0, 1] or not finite.
    """
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if not np.isfinite(heatmap).all() or heatmap.min(initial=0) < 0 or heatmap.max(initial=0) > 1:
        raise InputError(f"{name}: heatmap values must be finite and in [0, 1]")
    node = _add_volume_node(scene, "vtkMRMLScalarVolumeNode", heatmap, geometry, name)
    display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID(heatmap_color_table(scene).GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, 1.0)
    display.SetApplyThreshold(1)
    display.SetLowerThreshold(float(threshold))
    display.SetUpperThreshold(1.0)
    node.SetAttribute(ATTRIBUTE_PREFIX + "kind", "heatmap")
    return node


def add_table(
    scene: Any,
    columns: Mapping[str, Sequence[Any]],
    name: str,
    *,
    units: Mapping[str, str] | None = None,
    descriptions: Mapping[str, str] | None = None,
) -> Any:
    """A new ``vtkMRMLTableNode`` with one typed column per key (float, int or string by the values).

    ``units`` maps column name -> unit label (e.g. ``"mL"``), stored as Slicer column properties.
    """
    from vtkmodules.vtkCommonCore import vtkDoubleArray, vtkIntArray, vtkStringArray

    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise InputError(f"{name}: table columns have different lengths {sorted(lengths)}")
    table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
    table = table_node.GetTable()
    for col_name, values in columns.items():
        values = list(values)
        if all(isinstance(v, (bool, int, np.integer)) for v in values) and values:
            arr = vtkIntArray()
            for v in values:
                arr.InsertNextValue(int(v))
        elif all(isinstance(v, (float, int, np.floating, np.integer)) for v in values) and values:
            arr = vtkDoubleArray()
            for v in values:
                arr.InsertNextValue(float(v))
        else:
            arr = vtkStringArray()
            for v in values:
                arr.InsertNextValue(str(v))
        arr.SetName(col_name)
        table.AddColumn(arr)
    table_node.Modified()
    for col_name, unit in (units or {}).items():
        table_node.SetColumnUnitLabel(col_name, unit)
    for col_name, text in (descriptions or {}).items():
        table_node.SetColumnDescription(col_name, text)
    return table_node


def table_columns(table_node: Any) -> dict[str, list[Any]]:
    """Read a table node back as ``{column name: list of values}`` (numbers as float/int, else str)."""
    table = table_node.GetTable()
    out: dict[str, list[Any]] = {}
    for c in range(table.GetNumberOfColumns()):
        col = table.GetColumn(c)
        if col.IsA("vtkStringArray"):
            out[col.GetName()] = [col.GetValue(r) for r in range(col.GetNumberOfValues())]
        else:
            out[col.GetName()] = [col.GetValue(r) for r in range(col.GetNumberOfTuples())]
    return out


def add_plot(
    scene: Any, table_node: Any, x_column: str, y_columns: Sequence[str], name: str, *,
    x_title: str = "", y_title: str = ""
) -> Any:
    """A ``vtkMRMLPlotChartNode`` with one line series per ``y_columns`` entry drawn from ``table_node``."""
    slicer = _slicer()
    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", scene.GenerateUniqueName(name))
    chart.SetTitle(name)
    chart.SetXAxisTitle(x_title or x_column)
    chart.SetYAxisTitle(y_title)
    for y in y_columns:
        series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", scene.GenerateUniqueName(f"{name} {y}"))
        series.SetAndObserveTableNodeID(table_node.GetID())
        series.SetXColumnName(x_column)
        series.SetYColumnName(y)
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
    return chart
