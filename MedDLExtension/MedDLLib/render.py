"""Slice images as a person sees them in Slicer, written to PNG without OpenGL.

Uses ``vtkMRMLSliceLogic``: the same background / foreground / label layer blending, window/level, colour
tables, thresholds and opacities as a Slicer slice view. Segmentation nodes are not slice-logic layers; pass
a labelmap (e.g. the one :func:`MedDLLib.nodes.add_labelmap` made) as ``label``.

The temporary nodes it adds to the scene (slice, composite, slice model) are removed before returning.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .headless import application_logic

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
