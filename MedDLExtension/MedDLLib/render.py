"""Slice images written to PNG without OpenGL: from arrays (:func:`render_overlay`, what ``meddl infer`` writes;
no MRML) or from scene nodes as a Slicer slice view shows them (:func:`render_slice_png`).

:func:`render_slice_png` uses ``vtkMRMLSliceLogic``: the same background / foreground / label layer blending,
window/level, colour tables, thresholds and opacities as a Slicer slice view. Segmentation nodes are not
slice-logic layers; pass a labelmap (e.g. the one :func:`MedDLLib.nodes.add_labelmap` made) as ``label``.

The temporary nodes it adds to the scene (slice, composite, slice model) are removed before returning.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .headless import application_logic

if TYPE_CHECKING:
    from .geometry import Volume

ORIENTATIONS = ("Axial", "Sagittal", "Coronal")


def render_slice_png(
    path: str | os.PathLike,
    background: Any,
    *,
    foreground: Any | None = None,
    label: Any | None = None,
    orientation: str = "Axial",
    offset_mm: float | None = None,
    size_px: tuple[int, int] = (512, 512),
    foreground_opacity: float = 0.5,
    label_opacity: float = 0.6,
) -> Path:
    """Render one slice through ``background`` (+ optional ``foreground`` heatmap and ``label`` map) to PNG.

    Args:
        path: PNG file to write.
        background: scalar volume node (its display node's window/level is used).
        foreground: optional volume node blended on top (e.g. a heatmap from :func:`nodes.add_heatmap`).
        label: optional labelmap volume node drawn with its colour table.
        orientation: "Axial", "Sagittal" or "Coronal" (radiological convention: patient right on screen left).
        offset_mm: slice position along the slice normal in RAS mm (default: centre of the background).
        size_px: output (width, height) in pixels.
    Returns:
        the PNG path.
    """
    import slicer
    from vtkmodules.vtkIOImage import vtkPNGWriter

    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation must be one of {ORIENTATIONS}, got {orientation!r}")
    scene = background.GetScene()
    app_logic = application_logic(scene)
    existing = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    logic = slicer.vtkMRMLSliceLogic()
    logic.SetMRMLApplicationLogic(app_logic)
    logic.SetMRMLScene(scene)
    slice_node = logic.AddSliceNode(f"MedDLRender{id(logic)}")
    composite = logic.GetSliceCompositeNode()
    try:
        slice_node.SetOrientation(orientation)
        composite.SetBackgroundVolumeID(background.GetID())
        composite.SetForegroundVolumeID(foreground.GetID() if foreground is not None else None)
        composite.SetForegroundOpacity(float(foreground_opacity))
        composite.SetLabelVolumeID(label.GetID() if label is not None else None)
        composite.SetLabelOpacity(float(label_opacity))
        logic.ResizeSliceNode(int(size_px[0]), int(size_px[1]))
        logic.FitSliceToBackground()
        if offset_mm is not None:
            logic.SetSliceOffset(float(offset_mm))
        connection = logic.GetImageDataConnection()
        connection.GetProducer().Update()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = vtkPNGWriter()
        writer.SetFileName(str(path))
        writer.SetInputConnection(connection)
        writer.Write()
    finally:
        logic.SetMRMLScene(None)
        added = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
        for node in added:  # the slice, composite, slice-model and slice-display nodes the logic created
            if node.GetID() not in existing:
                scene.RemoveNode(node)
    return path


def slice_offset_of(node: Any, k: float, orientation: str = "Axial") -> float:
    """RAS offset (mm) along the view normal of voxel-slice index ``k`` of ``node`` (for axial views: S)."""
    from .nodes import geometry_from_node

    dims = node.GetImageData().GetDimensions()
    ras = geometry_from_node(node).ijk_to_ras_points(np.array([(dims[0] - 1) / 2.0, (dims[1] - 1) / 2.0, float(k)]))[0]
    return float(ras[{"Sagittal": 0, "Coronal": 1, "Axial": 2}[orientation]])


#: Heatmap values below this are not drawn (as :func:`MedDLLib.nodes.add_heatmap` hides them in Slicer).
HEATMAP_HIDDEN_BELOW = 0.2


def _display_window(background: np.ndarray, window: tuple[float, float] | None) -> tuple[float, float]:
    """(low, high) display range: ``window`` = (centre, width), else the 1st-99th percentile of the slice."""
    if window is not None:
        centre, width = float(window[0]), max(float(window[1]), 1e-6)
        return centre - width / 2.0, centre + width / 2.0
    finite = background[np.isfinite(background)]
    if finite.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(finite, [1.0, 99.0])
    return float(low), float(max(high, low + 1e-6))


def render_overlay(path: str | os.PathLike, background: "Volume", k: int, *, heatmap: np.ndarray | None = None,
                   labels: np.ndarray | None = None, colors: dict[int, tuple[float, float, float]] | None = None,
                   window: tuple[float, float] | None = None, size_px: int = 512, heatmap_opacity: float = 0.5,
                   label_opacity: float = 0.6) -> Path:
    """Render array slice ``k`` of ``background`` with an optional heatmap and label overlay to PNG (no MRML).

    The slice is the acquisition plane (array axis k). It is shown in the radiological convention where the axes
    allow: patient right on the left of the image, anterior (or superior) at the top, and scaled to square
    millimetres (the longer side ``size_px`` pixels).

    Args:
        background: the input volume (``array[k, j, i]`` and geometry).
        k: slice index (clipped to the volume).
        heatmap: ``[k, j, i]`` values in [0, 1] on the same grid (inferno, values below
            :data:`HEATMAP_HIDDEN_BELOW` hidden), blended at ``heatmap_opacity``.
        labels: ``[k, j, i]`` label values on the same grid; ``colors`` maps a value to its (r, g, b) in 0..1.
        window: (centre, width) of the grey values (default: the slice's 1st-99th percentile).
    Returns:
        the PNG path (written atomically).
    """
    from PIL import Image

    from .io import atomic_path

    array = np.asarray(background.array)  # one slice converted below, never the whole volume
    k = int(min(max(int(k), 0), array.shape[0] - 1))
    grey = np.asarray(array[k], dtype=np.float64)
    low, high = _display_window(grey, window)
    rgb = np.repeat(np.clip((grey - low) / (high - low), 0.0, 1.0)[..., None], 3, axis=2)
    if heatmap is not None:
        heat = np.clip(np.asarray(np.asarray(heatmap)[k], dtype=np.float64), 0.0, 1.0)
        from .colormap import inferno

        alpha = np.where(heat >= HEATMAP_HIDDEN_BELOW, float(heatmap_opacity), 0.0)[..., None]
        rgb = rgb * (1.0 - alpha) + inferno(heat) * alpha
    if labels is not None:
        lab = np.asarray(labels)[k]
        for value, color in (colors or {}).items():
            mask = (lab == value)[..., None]
            rgb = np.where(mask, rgb * (1.0 - label_opacity) + np.asarray(color, dtype=float) * label_opacity, rgb)
    # radiological view: columns towards patient left, rows towards posterior/inferior (flip where the grid's
    # i or j axis points the other way)
    direction = background.geometry.direction  # columns: i, j, k axes in LPS
    i_axis, j_axis = direction[:, 0], direction[:, 1]
    if i_axis[int(np.argmax(np.abs(i_axis)))] < 0:
        rgb = rgb[:, ::-1]
    if j_axis[int(np.argmax(np.abs(j_axis)))] < 0 and int(np.argmax(np.abs(j_axis))) == 1:
        rgb = rgb[::-1]
    elif int(np.argmax(np.abs(j_axis))) == 2 and j_axis[2] > 0:  # a row axis towards superior: superior on top
        rgb = rgb[::-1]
    spacing_i, spacing_j = background.geometry.spacing_mm[0], background.geometry.spacing_mm[1]
    width_mm, height_mm = rgb.shape[1] * spacing_i, rgb.shape[0] * spacing_j
    scale = size_px / max(width_mm, height_mm)
    size = (max(1, int(round(width_mm * scale))), max(1, int(round(height_mm * scale))))
    image = Image.fromarray(np.round(rgb * 255.0).astype(np.uint8), "RGB").resize(size, Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, ".png") as tmp:
        image.save(tmp, format="PNG")
    return path
