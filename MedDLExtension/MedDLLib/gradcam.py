"""Grad-CAM heatmaps for 2D and 3D networks, mapped back into the input volume's geometry.

The one Grad-CAM wrapper of the project, on top of ``monai.visualize.GradCAM`` / ``GradCAMpp``:

1. :func:`compute_gradcam` runs the network on a batch and returns raw-then-jointly-normalised maps in [0, 1]
   at the network input's resolution. Maps of a batch are normalised together (one maximum), so the slices
   of a volume processed slice by slice by a 2D network stay comparable: a slice without evidence stays dark.
2. :func:`heatmap_to_reference` takes that map on the network-input grid (its :class:`Geometry` is what the
   preprocessing produced, after whatever crop and resampling) and resamples it onto the input volume's grid.
3. :func:`add_heatmap_node` adds it to the scene as a heatmap overlay node (see :func:`nodes.add_heatmap`).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from .geometry import Geometry, Volume
from .resample import resample_to_reference

Method = Literal["gradcam", "gradcam++"]


def compute_gradcam(
    network: Any,
    inputs: Any,
    target_layer: str,
    *,
    class_index: int | None = None,
    method: Method = "gradcam",
) -> np.ndarray:
    """Grad-CAM of ``network`` for ``inputs``.

    Args:
        network: a torch module returning logits ``(B, n_classes)``; put in eval mode here (restored after).
        inputs: tensor ``(B, C, *spatial)`` (2D: spatial = (H, W); 3D: (D, H, W)) on the network's device.
        target_layer: name of the convolutional layer to explain (as in ``network.named_modules()``).
        class_index: output to explain (default: the arg-max logit of each sample; for one-output networks 0).
        method: ``"gradcam"`` or ``"gradcam++"``.
    Returns:
        float32 array ``(B, *spatial)`` in [0, 1], upsampled to the input size, normalised over the whole
        batch (all zeros when the network shows no positive evidence anywhere).
    """
    import torch
    from monai.visualize import GradCAM, GradCAMpp

    layer_names = {name for name, _ in network.named_modules()}
    if target_layer not in layer_names:
        raise ValueError(f"target layer {target_layer!r} is not in the network; some layers: {sorted(layer_names)[-8:]}")
    cam_class = {"gradcam": GradCAM, "gradcam++": GradCAMpp}[method]
    was_training = network.training
    network.eval()
    try:
        cam = cam_class(nn_module=network, target_layers=target_layer, postprocessing=lambda x: x)
        with torch.enable_grad():
            maps = cam(x=inputs, class_idx=class_index)
    finally:
        network.train(was_training)
    maps = maps.detach().float().cpu().numpy()[:, 0]  # (B, *spatial), ReLU'd, upsampled
    peak = float(maps.max(initial=0.0))
    return (maps / peak).astype(np.float32) if peak > 0 else np.zeros_like(maps, dtype=np.float32)


def heatmap_to_reference(heatmap: np.ndarray, network_grid: Geometry, reference: Volume) -> Volume:
    """Resample a heatmap ``[k, j, i]`` defined on ``network_grid`` onto ``reference``'s voxel grid.

    ``network_grid`` is the geometry of the network input (after the preprocessing's crops and resampling).
    Outside the network's field of view the heatmap is 0. Values stay in [0, 1] (linear interpolation).
    """
    on_grid = Volume(np.asarray(heatmap, dtype=np.float32), network_grid, {})
    back = resample_to_reference(on_grid, reference, default_value=0.0)
    return Volume(np.clip(back.array, 0.0, 1.0).astype(np.float32), back.geometry, {"kind": "heatmap"})


def add_heatmap_node(scene: Any, heatmap: Volume, name: str = "Grad-CAM", *, threshold: float = 0.2) -> Any:
    """Add a heatmap volume (values in [0, 1]) to ``scene`` as an inferno overlay node hiding values < threshold."""
    from . import nodes

    return nodes.add_heatmap(scene, heatmap.array, heatmap.geometry, name, threshold=threshold)


def mass_inside(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of the total heatmap mass that lies inside ``mask`` (same shape). 0 for an all-zero map."""
    heat = np.asarray(heatmap, dtype=np.float64)
    total = heat.sum()
    return float(heat[np.asarray(mask, dtype=bool)].sum() / total) if total > 0 else 0.0
