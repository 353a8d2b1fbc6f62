"""Grad-CAM heatmaps for 2D and 3D networks, mapped back into the input volume's geometry.

The one Grad-CAM of the project (the method of ``monai.visualize.GradCAM`` / ``GradCAMpp``, written on torch hooks
so that a heatmap does not import the whole of MONAI):

1. :func:`compute_gradcam` runs the network on a batch and returns raw-then-jointly-normalised maps in [0, 1]
   at the network input's resolution. Maps of a batch are normalised together (one maximum), so the slices
   of a volume processed slice by slice by a 2D network stay comparable: a slice without evidence stays dark.
2. :func:`heatmap_to_reference` takes that map on the network-input grid (its :class:`Geometry` is what the
   preprocessing produced, after whatever crop and resampling) and resamples it onto the input volume's grid.
3. :func:`add_heatmap_node` adds it to the scene as a heatmap overlay node (see :func:`nodes.add_heatmap`).
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, Literal, NamedTuple

import numpy as np

from .geometry import Geometry, Volume
from .resample import covering_box, resample_to_geometry, resize_axis

Method = Literal["gradcam", "gradcam++"]


#: Largest difference of a bf16 Grad-CAM map from the fp32 one (maps in [0, 1]) for bf16 to be used.
BF16_MAP_TOLERANCE = 0.02

#: Largest difference of the network's outputs (logits) from torch fp32's for a runtime to run Grad-CAM's trunk
#: (ICH and lung take their prediction from Grad-CAM's forward: sigmoid probabilities then move by at most a
#: quarter of it, a risk score by it).
TRUNK_OUTPUT_TOLERANCE = 1e-3

#: A trunk whose torch forward takes less than this (seconds, all batches) stays in torch without an export:
#: loading and compiling one took 7 ms to 2 s here, so a runtime could not win it back (ICH's trunk, 40 slices
#: to ``layer3``, takes about 30 ms; glioma's seed ResNet-10 to ``layer2`` on 64 x 256 x 256, 4 s).
TRUNK_MIN_TORCH_SECONDS = 0.05


def compute_gradcam(
    network: Any,
    inputs: Any,
    target_layer: str,
    *,
    class_index: int | None = None,
    method: Method = "gradcam",
    bf16: bool | None = None,
    return_logits: bool = False,
    score: Callable[[Any], Any] | None = None,
    batch_size: int | None = None,
    cancel: Callable[[], bool] | None = None,
    progress: Callable[[float, str], None] | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Grad-CAM of ``network`` for ``inputs`` (a forward hook on ``target_layer``; no MONAI import).

    The precision it ran in is noted on the network's runner (:attr:`MedDLLib.runtime.Runner.ran`, key
    ``"Grad-CAM <target_layer>"``): a study's ``result.json`` says it under ``runtime``.

    Args:
        network: a torch module returning logits ``(B, n_classes)`` (or, with ``score``, any output ``score``
            turns into them); put in eval mode here (restored after).
        inputs: tensor ``(B, C, *spatial)`` (2D: spatial = (H, W); 3D: (D, H, W)) on the network's device.
        target_layer: name of the convolutional layer to explain (as in ``network.named_modules()``).
        class_index: output to explain (default: the arg-max logit of each sample; for one-output networks 0).
        method: ``"gradcam"`` (channel weight = mean gradient) or ``"gradcam++"`` (Chattopadhay et al. 2018).
        bf16: run under bf16 autocast on the CPU. None (default): only where it was measured to agree, for a
            network attached to its package (:func:`MedDLLib.runtime.attach`) on a CPU with bf16 dot products:
            the first call for a layer and input shape computes both maps (of its first batch), keeps bf16 when its
            map is within :data:`BF16_MAP_TOLERANCE` of the fp32 one and faster, and records the choice beside
            the package's runtime export; elsewhere, and under ``$MEDDL_RUNTIME=torch``, fp32.
        return_logits: also return the forward's logits ``(B, n_classes)`` float32 (the network's output; the
            prediction, so a caller that needs both runs one forward; under bf16 they carry bf16's rounding).
        score: ``network output -> class scores (B, n_classes)`` that Grad-CAM explains (e.g. a segmentation
            network's mean positive logit: ``(B, 1, H, W) -> (B, 1)``); default: the output itself.
        batch_size: samples per forward and backward (memory for one batch's activations and graph at a time);
            default: all of ``inputs`` at once. The maps are normalised over all of ``inputs`` either way.
        cancel: polled before each batch; true raises :class:`MedDLLib.errors.Cancelled`.
        progress: ``(fraction of inputs done, "Grad-CAM")`` after each batch.

    The trunk (the layers up to the target layer, which need no gradient) runs on the runtime
    :mod:`MedDLLib.runtime` chooses for it, for a network attached to its package on the CPU whose trunk
    :func:`split_at` can cut off: the runtime must give outputs within :data:`TRUNK_OUTPUT_TOLERANCE` and maps
    within :data:`BF16_MAP_TOLERANCE` of torch fp32's through the torch head, and win back its start-up (a trunk
    under :data:`TRUNK_MIN_TORCH_SECONDS` in torch is not exported). Elsewhere the trunk runs in torch,
    channels-last.

    Returns:
        float32 array ``(B, *spatial)`` in [0, 1], upsampled (linear) to the input size, normalised over the whole
        batch (all zeros when the network shows no positive evidence anywhere); with ``return_logits`` the pair
        ``(maps, logits)``.
    """
    modules = dict(network.named_modules())
    if target_layer not in modules:
        raise ValueError(f"target layer {target_layer!r} is not in the network; some layers: {sorted(modules)[-8:]}")
    if method not in ("gradcam", "gradcam++"):
        raise ValueError(f"unknown Grad-CAM method {method!r}; expected 'gradcam' or 'gradcam++'")
    if len(inputs) == 0:
        raise ValueError("Grad-CAM of no inputs: the batch is empty")
    from . import runtime
    from .errors import Cancelled

    layer, size = modules[target_layer], max(1, int(batch_size or len(inputs)))
    cams, outputs, ran = [], [], set()
    trunk = _runtime_trunk(network, target_layer, inputs, size, class_index, method, score)
    for start in range(0, len(inputs), size):
        if cancel is not None and cancel():
            raise Cancelled("cancelled by the user")
        batch, cam = inputs[start:start + size], None
        if bf16 is None:
            cam, output, bf16 = _choose_precision(network, batch, layer, target_layer, class_index, method, score,
                                                  trunk)
        if cam is None:
            cam, output = _gradcam(network, batch, layer, class_index, method, bool(bf16), score, trunk)
            ran.add("torch-bf16" if bf16 else "torch")
        else:  # the measuring call answers with its fp32 map
            ran.add("torch")
        cams.append(cam)
        outputs.append(output)
        if progress is not None:
            progress(min(1.0, (start + size) / len(inputs)), "Grad-CAM")
    maps = cam_maps(np.concatenate(cams), tuple(inputs.shape[2:]))
    for precision in sorted(ran):
        runtime.runner_for(network).note_ran(f"Grad-CAM {target_layer}", runtime.describe(precision, inputs.device))
    return (maps, np.concatenate(outputs)) if return_logits else maps


def _choose_precision(network: Any, inputs: Any, layer: Any, target_layer: str, class_index: int | None,
                      method: str, score: Callable[[Any], Any] | None,
                      trunk: _Trunk | None = None) -> tuple[np.ndarray | None, Any, bool]:
    """``(cam, output, bf16)``: the recorded choice (cam None), or both precisions measured now (fp32's cam)."""
    import time

    from . import runtime

    if (getattr(inputs, "device", None) is None or inputs.device.type != "cpu" or not runtime.cpu_has_bf16()
            or runtime.forced_backend() == "torch"):  # forced torch: the fp32 reference, never a timed choice
        return None, None, False
    runner = runtime.runner_for(network)
    if runner.folder is None:
        return None, None, False
    key = f"{target_layer}:{method}:{class_index}:{'x'.join(str(int(n)) for n in inputs.shape[1:])}"
    choice = runner.gradcam_choice(key)
    if choice is not None:
        return None, None, bool(choice.get("bf16"))
    start = time.perf_counter()
    cam, output = _gradcam(network, inputs, layer, class_index, method, False, score, trunk)
    fp32_s = time.perf_counter() - start
    start = time.perf_counter()
    cam_bf16, _ = _gradcam(network, inputs, layer, class_index, method, True, score, trunk)
    bf16_s = time.perf_counter() - start
    spatial = tuple(inputs.shape[2:])
    difference = float(np.abs(cam_maps(cam, spatial) - cam_maps(cam_bf16, spatial)).max(initial=0.0))
    use = difference <= BF16_MAP_TOLERANCE and bf16_s < fp32_s
    runner.record_gradcam_choice(key, {"bf16": use, "max_map_difference": difference,
                                       "seconds": {"fp32": fp32_s, "bf16": bf16_s}})
    return cam, output, use


def _gradcam(network: Any, inputs: Any, layer: Any, class_index: int | None, method: str,
             bf16: bool, score: Callable[[Any], Any] | None = None,
             trunk: _Trunk | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Raw class activation maps ``(B, 1, *cells)`` (at the layer's resolution, any sign: :func:`cam_maps`
    makes Grad-CAM's maps of them) and the network's output, of one Grad-CAM pass (see
    :func:`compute_gradcam`). ``trunk`` (:func:`_runtime_trunk`): its runner gives the target layer's output when
    its choice for these inputs is a runtime (or still to be measured)."""
    import contextlib

    import torch

    shape = tuple(inputs.shape)
    if trunk is not None and trunk.runner.choice(shape) != "torch":
        was_training = network.training
        network.eval()
        try:
            activation = torch.from_numpy(trunk.runner(inputs.detach().cpu().numpy(), calls=trunk.calls))
            if trunk.runner.choice(shape) != "torch":
                return _head_gradcam(trunk.head, activation, class_index, method, bf16, score)
            trunk.runner.forget(shape)  # measured now and kept in torch: the usual pass (channels-last) below
        finally:
            network.train(was_training)
    saved: dict[str, Any] = {}

    def keep_activation(module: Any, args: Any, output: Any) -> Any:
        # The layers before this one ran without recording a graph (their gradients are never needed); from here
        # on the graph is recorded, starting at the activation (a clone goes on, so in-place layers are safe).
        torch.set_grad_enabled(True)
        saved["activation"] = output.detach().contiguous().requires_grad_(True)
        return saved["activation"].clone()

    def contiguous_inputs(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        # From the target layer on (grad mode), every layer gets contiguous inputs (a U-Net's skip connections
        # were made channels-last before it), so the backward runs torch's contiguous kernels: channels-last
        # backward crashed torch 2.13 (SIGSEGV) on some small networks.
        if not torch.is_grad_enabled():
            return None
        return tuple(a.contiguous() if isinstance(a, torch.Tensor) else a for a in args)

    was_training = network.training
    network.eval()
    handles = [layer.register_forward_hook(keep_activation)]
    handles += [module.register_forward_pre_hook(contiguous_inputs) for module in network.modules()]
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    try:
        with torch.no_grad(), autocast:  # grad mode turns on at the target layer (keep_activation)
            output = network(_channels_last(inputs))
            if "activation" not in saved:
                raise ValueError("the target layer was not run by the network's forward")
            chosen = _explained(output if score is None else score(output), class_index)
            # the gradient at the layer only: no weight gradients are computed or left on the network
            (gradient,) = torch.autograd.grad(chosen.sum(), saved["activation"])
    finally:
        for handle in handles:
            handle.remove()
        network.train(was_training)
    return _cam(saved["activation"], gradient, chosen, method), output.detach().float().cpu().numpy()


def _head_gradcam(head: Any, activation: Any, class_index: int | None, method: str, bf16: bool,
                  score: Callable[[Any], Any] | None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_gradcam` from the target layer's output ``activation`` (a CPU tensor) through ``head`` (the rest
    of the network, :func:`split_at`)."""
    import contextlib

    import torch

    leaf = activation.detach().float().contiguous().requires_grad_(True)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with torch.enable_grad(), autocast:
        output = head(leaf.clone())  # a clone goes on: an in-place layer in the head leaves the leaf alone
        chosen = _explained(output if score is None else score(output), class_index)
        (gradient,) = torch.autograd.grad(chosen.sum(), leaf)
    return _cam(leaf, gradient, chosen, method), output.detach().float().cpu().numpy()


def _explained(logits: Any, class_index: int | None) -> Any:
    """The scores Grad-CAM explains, ``(B,)``: each sample's ``class_index`` logit (its arg-max when None)."""
    import torch

    index = logits.argmax(dim=1) if class_index is None else torch.full(
        (logits.shape[0],), int(class_index), dtype=torch.long, device=logits.device)
    return logits.gather(1, index[:, None])[:, 0]


def _cam(activation: Any, gradient: Any, chosen: Any, method: str) -> np.ndarray:
    """Raw class activation maps ``(B, 1, *cells)`` from the target layer's output, the gradient of the explained
    scores ``chosen (B,)`` with respect to it, and the ``method``."""
    import torch
    import torch.nn.functional as F

    acti, grad = activation.detach().float(), gradient.detach().float()
    reduce = tuple(range(2, acti.ndim))
    if method == "gradcam":
        weights = grad.mean(dim=reduce, keepdim=True)
    else:
        grad_2, grad_3 = grad.pow(2), grad.pow(3)
        denominator = 2 * grad_2 + acti.sum(dim=reduce, keepdim=True) * grad_3
        alpha = grad_2 / (torch.where(denominator != 0, denominator, torch.ones_like(denominator)) + 1e-7)
        positive = F.relu(chosen.detach().float().exp().view(-1, *([1] * (acti.ndim - 1))) * grad)
        weights = (alpha * positive).sum(dim=reduce, keepdim=True)
    cam = (weights * acti).sum(dim=1, keepdim=True)
    return cam.cpu().numpy()


def split_at(network: Any, target_layer: str) -> tuple[Any, Any] | None:
    """``(trunk, head)`` of ``network`` cut after ``target_layer``: ``trunk(x)`` is that layer's output and
    ``head(activation)`` the network's output from it (``head(trunk(x)) == network(x)``; torch.fx modules sharing
    the network's parameters, the trunk run channels-last in torch, :func:`_channels_last_module`). None when
    torch.fx cannot trace the network (shape-dependent Python, as a U-Net's padding), the layer is called more than
    once, or anything else of the trunk reaches the head (a U-Net's skip connections)."""
    import torch.fx as fx

    class Tracer(fx.Tracer):
        def is_leaf_module(self, module: Any, name: str) -> bool:
            return name == target_layer or super().is_leaf_module(module, name)

    try:
        graph = Tracer().trace(network)
    except Exception:  # noqa: BLE001 - not traceable: Grad-CAM runs the whole network in torch
        return None
    nodes = list(graph.nodes)
    cuts = [i for i, node in enumerate(nodes) if node.op == "call_module" and node.target == target_layer]
    if len(cuts) != 1:
        return None
    cut = nodes[cuts[0]]
    before = set(nodes[:cuts[0]])
    for node in nodes[cuts[0] + 1:]:
        if any(arg in before and arg.op != "get_attr" for arg in node.all_input_nodes):
            return None
    trunk_graph, copied = fx.Graph(), {}
    for node in nodes[:cuts[0] + 1]:
        copied[node] = trunk_graph.node_copy(node, lambda arg: copied[arg])
    trunk_graph.output(copied[cut])
    head_graph = fx.Graph()
    copied = {cut: head_graph.placeholder("activation")}

    def head_arg(arg: Any) -> Any:
        if arg not in copied:  # a parameter or buffer read by the head (get_attr)
            copied[arg] = head_graph.node_copy(arg, head_arg)
        return copied[arg]

    for node in nodes[cuts[0] + 1:]:
        copied[node] = head_graph.node_copy(node, head_arg)
    trunk = fx.GraphModule(network, trunk_graph)
    trunk.graph.eliminate_dead_code()  # what only the head needed
    trunk.recompile()
    return _channels_last_module(trunk), fx.GraphModule(network, head_graph)


def _channels_last_module(module: Any) -> Any:
    """``module`` with its torch forward run on channels-last inputs on the CPU (:func:`_channels_last`: as
    Grad-CAM's torch pass runs the trunk, so a runtime is timed against that); a trace (an export) sees ``module``
    as it is (ONNX has no memory format)."""
    import torch

    class ChannelsLast(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.module = module

        def forward(self, x: Any) -> Any:
            return self.module(x if torch.jit.is_tracing() else _channels_last(x))

    return ChannelsLast()


class _Trunk(NamedTuple):
    """Grad-CAM's trunk on a runtime: ``runner`` (:class:`MedDLLib.runtime.Runner` of the trunk), ``head`` (the
    rest of the network, in torch), ``calls`` (the batches of this Grad-CAM, weighed against a start-up)."""

    runner: Any
    head: Any
    calls: int


#: The network's attribute holding, per target layer, its trunk's runner and its torch head, or None where
#: :func:`split_at` cannot cut it (on the network, as its runners: a dict keyed by it would keep it alive)
_SPLITS_ATTRIBUTE = "_meddl_gradcam_splits"


def _runtime_trunk(network: Any, target_layer: str, inputs: Any, batch_size: int, class_index: int | None,
                   method: str, score: Callable[[Any], Any] | None) -> _Trunk | None:
    """Grad-CAM's trunk up to ``target_layer`` on the runtime chosen for it (see :func:`compute_gradcam`); None
    where it stays in torch (not on the CPU, no package, a forced torch, a network :func:`split_at` cannot cut)."""
    from . import runtime

    if getattr(inputs, "device", None) is None or inputs.device.type != "cpu" or \
            runtime.forced_backend() == "torch" or runtime.runner_for(network).folder is None:
        return None
    splits = network.__dict__.setdefault(_SPLITS_ATTRIBUTE, {})
    if target_layer not in splits:
        parts = split_at(network, target_layer)
        if parts is None:
            splits[target_layer] = None
        else:
            trunk, head = parts
            spatial = tuple(int(n) for n in inputs.shape[2:])
            # the reference's head pass, kept for the next candidate of the same choice (the reference held weakly)
            last: dict[str, Any] = {"reference": lambda: None}

            def head_pass(activation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                import torch

                cam, output = _head_gradcam(head, torch.from_numpy(np.asarray(activation, dtype=np.float32)),
                                            class_index, method, False, score)
                return cam_maps(cam, spatial), output

            def agree(reference: np.ndarray, candidate: np.ndarray) -> bool:
                if last["reference"]() is not reference:
                    last.update(reference=weakref.ref(reference), result=head_pass(reference))
                (reference_maps, reference_output), (maps, output) = last["result"], head_pass(candidate)
                return (float(np.abs(output - reference_output).max(initial=0.0)) <= TRUNK_OUTPUT_TOLERANCE
                        and float(np.abs(maps - reference_maps).max(initial=0.0)) <= BF16_MAP_TOLERANCE)

            runner = runtime.runner_for(network, agree=agree, forward=f"gradcam_trunk_{target_layer}", module=trunk)
            runner.min_torch_seconds = TRUNK_MIN_TORCH_SECONDS
            splits[target_layer] = (runner, head)
    found = splits[target_layer]
    if found is None:
        return None
    return _Trunk(found[0], found[1], max(1, -(-len(inputs) // batch_size)))


def _channels_last(inputs: Any) -> Any:
    """``inputs (B, C, *spatial)`` in channels-last memory order on the CPU (2D and 3D; others as they are): the
    layers before the target layer, which run without a graph, then use oneDNN's channels-last kernels (ICH's 2.5D
    ResNet forward on 40 x 9 x 64 x 64: 7.3 against 24.5 ms contiguous, fp32, 2 threads of a Zen 5)."""
    import torch

    formats = {4: torch.channels_last, 5: torch.channels_last_3d}
    if inputs.device.type != "cpu" or inputs.ndim not in formats:
        return inputs
    return inputs.contiguous(memory_format=formats[inputs.ndim])


def cam_maps(cam: Any, spatial: tuple[int, ...]) -> np.ndarray:
    """Class activation maps ``(B, 1, *cells)`` (a torch tensor or an array; any sign) as Grad-CAM's maps: the
    positive part, upsampled (linear) to the input's ``spatial`` size, normalised over the whole batch.

    :func:`compute_gradcam` ends here; so does a network whose Grad-CAM needs no gradient (e.g. glioma's
    evidence map: one channel and a head whose gradient is positive everywhere, so the map is the layer's own
    output, up to a positive factor the normalisation removes).

    Returns:
        float32 ``(B, *spatial)`` in [0, 1] (all zeros when no cell is positive).
    """
    if not isinstance(cam, np.ndarray):  # a torch tensor
        cam = cam.detach().float().cpu().numpy()
    maps = np.maximum(np.asarray(cam, dtype=np.float32)[:, 0], np.float32(0.0))
    for axis in range(len(spatial), 0, -1):  # the last axis first, as torch's (bi/tri)linear
        maps = resize_axis(maps, axis, int(spatial[axis - 1]))
    peak = float(maps.max(initial=0.0))
    if not peak > 0:
        return np.zeros(maps.shape, dtype=np.float32)
    maps /= np.float32(peak)
    return maps


def heatmap_to_reference(heatmap: np.ndarray, network_grid: Geometry, reference: Volume) -> Volume:
    """Resample a heatmap ``[k, j, i]`` defined on ``network_grid`` onto ``reference``'s voxel grid.

    ``network_grid`` is the geometry of the network input (after the preprocessing's crops and resampling).
    Outside the network's field of view the heatmap is 0. Values stay in [0, 1] (linear interpolation).
    Only the reference voxels inside the network grid's bounding box are resampled (a lung crop is a fraction of
    a 300-slice chest CT); the result is one float32 array of the reference's shape, clipped in place.
    """
    heat = np.asarray(heatmap, dtype=np.float32)
    out = np.zeros(reference.array.shape, dtype=np.float32)
    box = covering_box(heat.shape, network_grid, reference.geometry, reference.array.shape)
    if box is not None:
        (k0, k1), (j0, j1), (i0, i1) = box
        origin = reference.geometry.ijk_to_lps() @ np.array([i0, j0, k0, 1.0])
        part_grid = Geometry(reference.geometry.spacing_mm, tuple(float(v) for v in origin[:3]),
                             reference.geometry.direction_lps)
        part = resample_to_geometry(Volume(heat, network_grid, {}), part_grid, (i1 - i0, j1 - j0, k1 - k0),
                                    default_value=0.0).array
        target = out[k0:k1, j0:j1, i0:i1]
        np.clip(part, 0.0, 1.0, out=target, casting="unsafe")
    return Volume(out, reference.geometry, {"kind": "heatmap"})


def add_heatmap_node(scene: Any, heatmap: Volume, name: str = "Grad-CAM", *, threshold: float = 0.2) -> Any:
    """Add a heatmap volume (values in [0, 1]) to ``scene`` as an inferno overlay node hiding values < threshold."""
    from . import nodes

    return nodes.add_heatmap(scene, heatmap.array, heatmap.geometry, name, threshold=threshold)


def mass_inside(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of the total heatmap mass that lies inside ``mask`` (same shape). 0 for an all-zero map."""
    heat = np.asarray(heatmap, dtype=np.float64)
    total = heat.sum()
    return float(heat[np.asarray(mask, dtype=bool)].sum() / total) if total > 0 else 0.0
