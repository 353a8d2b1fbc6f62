"""MONAI model-zoo bundles in MedDL: import offline, run through an allow-list, outputs on the input's voxel grid.

A zoo bundle (``configs/metadata.json``, ``configs/inference.json``, ``models/model.pt``) describes its inference as
MONAI config: ``_target_`` names of classes and ``$`` Python expressions. MedDL never evaluates either and never
imports what a bundle names. It reads the inference config into an :class:`InferencePlan` made only of pieces it
knows:

- the network: ``network_def`` with a ``_target_`` from MedDL's MONAI allow-list
  (:data:`MedDLLib.models.MONAI_NETWORKS`), built by :func:`MedDLLib.models.build_network`;
- preprocessing (:data:`PREPROCESSING`): orientation, spacing and the intensity transforms
  ``ScaleIntensityRanged``, ``NormalizeIntensityd``, ``ScaleIntensityd`` (loading and channel-first steps are
  MedDL's reader's work);
- the inferer (:data:`INFERERS`): ``SlidingWindowInferer`` or ``SimpleInferer``;
- postprocessing: ``Activationsd`` (softmax/sigmoid), ``AsDiscreted`` (argmax/threshold), ``Invertd`` (MedDL
  always returns outputs on the input's grid) and ``SaveImaged`` (MedDL writes its own files). Another
  postprocessing step (e.g. brats' ``Lambdad`` that packs the three regions into BraTS label values) is not run
  and the plan says so in its notes: MedDL returns one mask per output channel instead.

Anything else (another transform, inferer or network, a ``%`` macro, an argument MedDL does not know) refuses the
bundle with a :class:`~MedDLLib.errors.ModelError` naming the file, the step and what MedDL runs instead. References
(``@key``, ``@a#b``) are looked up; a ``$`` value is read only when it is a literal or a conditional between
literals on a referenced flag (``$[1.5, 1.5, 1.5] if @displayable_configs#highres else [3.0, 3.0, 3.0]``): it is
parsed with :mod:`ast` and interpreted for those node types alone, never passed to ``eval``.

Geometry: MONAI bundles work on arrays indexed ``[channel, i, j, k]`` in the orientation ``Orientationd`` asks for
(RAS: i towards Right, j towards Anterior, k towards Superior); MedDL's volumes are ``[k, j, i]`` in LPS. The
input is resampled once onto the plan's grid (orientation and spacing together, linear), transposed to
``[i, j, k]`` for the network, and the output is transposed back and resampled onto the input's grid (nearest for
labels, linear for probabilities, as the bundle's ``Invertd`` asks), so masks overlay the input in Slicer.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from . import models
from .errors import InputError, ModelError
from .geometry import Geometry, Volume
from .models import package as _package

BUNDLE_RECIPE = "monai-bundle"
#: MedDL's ``task`` for an imported zoo bundle (a helper model any task may use, not one task's main model).
BUNDLE_TASK = "monai-bundle"
INFERENCE_FILE = "configs/inference.json"
#: Preprocessing MedDL runs: transform -> arguments it reads (``keys`` and the ones in ``_IGNORED_ARGS`` aside).
PREPROCESSING: dict[str, frozenset[str]] = {
    "LoadImaged": frozenset({"image_only", "reader", "ensure_channel_first"}),
    "EnsureChannelFirstd": frozenset({"channel_dim"}),
    "EnsureTyped": frozenset({"data_type", "dtype", "track_meta"}),
    "Orientationd": frozenset({"axcodes"}),
    "Spacingd": frozenset({"pixdim", "mode"}),
    "ScaleIntensityRanged": frozenset({"a_min", "a_max", "b_min", "b_max", "clip"}),
    "NormalizeIntensityd": frozenset({"nonzero", "channel_wise"}),
    "ScaleIntensityd": frozenset({"minv", "maxv"}),
}
INFERERS: dict[str, frozenset[str]] = {
    "SlidingWindowInferer": frozenset({"roi_size", "sw_batch_size", "overlap", "mode", "padding_mode", "device"}),
    "SimpleInferer": frozenset(),
}
POSTPROCESSING: dict[str, frozenset[str]] = {
    "Activationsd": frozenset({"softmax", "sigmoid"}),
    "AsDiscreted": frozenset({"argmax", "threshold"}),
    "Invertd": frozenset({"transform", "orig_keys", "meta_keys", "nearest_interp", "to_tensor"}),
    "SaveImaged": frozenset({"output_dir", "output_ext", "output_dtype", "output_postfix", "separate_folder",
                             "resample", "squeeze_end_dims", "meta_keys"}),
}
_IGNORED_ARGS = frozenset({"keys", "allow_missing_keys"})
#: Steps whose arguments MedDL reads (so resolves); the others' arguments are checked by name only.
_READ_ARGS_OF = frozenset({"Orientationd", "Spacingd", "ScaleIntensityRanged", "NormalizeIntensityd",
                           "ScaleIntensityd", "Activationsd", "AsDiscreted"})
_REF = re.compile(r"@([A-Za-z_][\w#]*)")
_MAX_JSON_BYTES = 4 * 1024 * 1024


@dataclass
class InferencePlan:
    """What MedDL runs for a bundle: every field comes from the bundle's config through the allow-list."""

    network: dict[str, Any]                     # {"name": "monai.networks.nets.X", "args": {...}}
    channels: list[str]                         # input channel names, in the network's order
    labels: dict[int, str]                      # output channel -> name
    axcodes: str | None = None                  # "RAS" or None (keep the input's axes)
    pixdim_mm: tuple[float, float, float] | None = None   # spacing along the plan's (i, j, k), or None
    intensity: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    inferer: tuple[str, dict[str, Any]] = ("SimpleInferer", {})
    activation: str | None = None               # "softmax" | "sigmoid" | None
    discretize: dict[str, Any] = field(default_factory=dict)   # {"argmax": True} or {"threshold": 0.5}
    invert_before_discretize: bool = False      # Invertd before AsDiscreted: probabilities resampled linearly
    weights_file: str = models.WEIGHTS_FILE
    notes: list[str] = field(default_factory=list)


@dataclass
class BundleOutput:
    """A bundle's output on the input's voxel grid.

    ``labelmap`` holds one label per voxel (argmax bundles: 0..C-1, names in ``labels``); ``masks`` holds one 0/1
    array per output channel (threshold bundles, channels may overlap), each ``[k, j, i]`` like the input.
    """

    labels: dict[int, str]
    geometry: Geometry
    labelmap: np.ndarray | None = None
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def mask(self, name: str) -> np.ndarray:
        """The 0/1 mask of output ``name`` (a label of the labelmap or a channel of the masks)."""
        if name in self.masks:
            return self.masks[name]
        ids = [i for i, n in self.labels.items() if n == name]
        if self.labelmap is None or not ids:
            raise InputError(f"the bundle has no output {name!r}; it has: {', '.join(self.labels.values())}")
        return (self.labelmap == ids[0]).astype(np.uint8)


# ------------------------------------------------------------------------------------------------ reading configs
def read_json(file: Path) -> dict[str, Any]:
    """A bundle's JSON file: size- and nesting-bounded, an object, one clear line when not."""
    if not file.is_file():
        raise ModelError(f"{file} is missing (a MONAI bundle has configs/metadata.json and configs/inference.json)")
    if file.stat().st_size > _MAX_JSON_BYTES:
        raise ModelError(f"{file} is larger than {_MAX_JSON_BYTES:,} bytes; not a bundle config")
    text = file.read_text(encoding="utf-8", errors="replace")
    if _package._nesting_depth(text) > _package.MAX_METADATA_DEPTH:
        raise ModelError(f"{file} nests brackets deeper than {_package.MAX_METADATA_DEPTH}; refused")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ModelError(f"{file} is not valid JSON: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{file} must hold a JSON object, got {type(data).__name__}")
    return data


class _Resolver:
    """Looks up ``@`` references and reads literal ``$`` values of one config (never ``eval``)."""

    def __init__(self, config: Mapping[str, Any], file: Path):
        self.config, self.file = config, file

    def value(self, value: Any, where: str, depth: int = 0) -> Any:
        if depth > 16:
            raise ModelError(f"{self.file}: {where}: references nest too deep")
        if isinstance(value, str):
            if value.startswith("@"):
                return self.value(self.lookup(value[1:], where), where, depth + 1)
            if value.startswith("$"):
                return self.expression(value[1:], where, depth)
            if value.startswith("%"):
                raise ModelError(f"{self.file}: {where}: macro {value!r} (another file's content) is not read by "
                                 "MedDL")
            return value
        if isinstance(value, list):
            return [self.value(v, where, depth + 1) for v in value]
        if isinstance(value, dict):
            return {k: self.value(v, f"{where}#{k}", depth + 1) for k, v in value.items()}
        return value

    def lookup(self, ref: str, where: str) -> Any:
        node: Any = self.config
        for part in ref.split("#"):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise ModelError(f"{self.file}: {where}: reference @{ref} names nothing in the config")
        return node

    def expression(self, text: str, where: str, depth: int) -> Any:
        refs: dict[str, Any] = {}

        def substitute(match: re.Match) -> str:
            name = f"_ref{len(refs)}"
            refs[name] = self.value("@" + match.group(1), where, depth + 1)
            return name

        refused = ModelError(f"{self.file}: {where}: the expression {'$' + text!r} is Python code; MedDL reads only "
                             "literals and 'literal if @flag else literal', and never runs code from a bundle")
        try:
            tree = ast.parse(_REF.sub(substitute, text), mode="eval")
        except (SyntaxError, ModelError, ValueError):
            raise refused from None

        def read(node: ast.AST) -> Any:
            if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool, type(None))):
                return node.value
            if isinstance(node, (ast.List, ast.Tuple)):
                return [read(e) for e in node.elts]
            if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
                operand = read(node.operand)
                if isinstance(operand, (int, float)) and not isinstance(operand, bool):
                    return -operand if isinstance(node.op, ast.USub) else operand
            if isinstance(node, ast.Name) and node.id in refs:
                return refs[node.id]
            if isinstance(node, ast.IfExp):
                flag = read(node.test)
                if isinstance(flag, bool):
                    return read(node.body) if flag else read(node.orelse)
            raise refused

        return read(tree.body)


def read_plan(root: Path, metadata: Mapping[str, Any] | None = None) -> InferencePlan:
    """The :class:`InferencePlan` of the bundle folder ``root`` (refuses what MedDL does not run, one line)."""
    file = root / INFERENCE_FILE
    config = read_json(file)
    meta = dict(metadata) if metadata is not None else read_json(root / "configs" / "metadata.json")
    r = _Resolver(config, file)
    notes: list[str] = []
    image_key = r.value(config.get("image_key", "image"), "image_key")

    # network
    if "network_def" not in config:
        raise ModelError(f"{file}: no network_def; MedDL runs bundles whose network_def is a MONAI network")
    net = r.value(config["network_def"], "network_def")
    if not isinstance(net, dict) or not isinstance(net.get("_target_"), str):
        raise ModelError(f"{file}: network_def must be an object with a _target_")
    target = net.pop("_target_")
    short = target.rpartition(".")[2] if target.startswith("monai.networks.nets.") else target
    if short not in models.MONAI_NETWORKS:
        raise ModelError(f"{file}: network_def _target_ {target!r} is not a MONAI network MedDL allows "
                         f"(allowed: {', '.join(models.MONAI_NETWORKS)})")
    network = {"name": "monai.networks.nets." + short, "args": net}

    # input/output description
    fmt = meta.get("network_data_format") or {}
    inputs = (fmt.get("inputs") or {}).get(image_key) or next(iter((fmt.get("inputs") or {}).values()), {})
    outputs = (fmt.get("outputs") or {}).get("pred") or next(iter((fmt.get("outputs") or {}).values()), {})
    n_in = int(inputs.get("num_channels") or net.get("in_channels") or 1)
    channel_def = inputs.get("channel_def") or {}
    channels = [str(channel_def.get(str(i), f"channel {i}")) for i in range(n_in)]
    n_out = int(outputs.get("num_channels") or net.get("out_channels") or 1)
    out_def = outputs.get("channel_def") or {}
    labels = {i: str(out_def.get(str(i), f"channel {i}")) for i in range(n_out)}

    plan = InferencePlan(network=network, channels=channels, labels=labels, notes=notes)
    for index, (name, args) in enumerate(_steps(r, config.get("preprocessing"), "preprocessing")):
        _check_args(file, f"preprocessing step {index + 1} {name!r}", name, args, PREPROCESSING,
                    "preprocessing MedDL runs")
        _check_keys(file, name, args, image_key)
        if name == "Orientationd":
            axcodes = args.get("axcodes")
            if axcodes != "RAS":
                raise ModelError(f"{file}: Orientationd axcodes {axcodes!r}: MedDL runs 'RAS' only")
            plan.axcodes = "RAS"
        elif name == "Spacingd":
            pixdim = args.get("pixdim")
            if (not isinstance(pixdim, list) or len(pixdim) != 3
                    or not all(isinstance(v, (int, float)) and 0.05 <= v <= 50 for v in pixdim)):
                raise ModelError(f"{file}: Spacingd pixdim {pixdim!r}: MedDL needs three spacings of 0.05-50 mm")
            if args.get("mode", "bilinear") not in ("bilinear", "linear", 1):
                raise ModelError(f"{file}: Spacingd mode {args.get('mode')!r}: MedDL resamples images linearly")
            plan.pixdim_mm = tuple(float(v) for v in pixdim)
        elif name in ("ScaleIntensityRanged", "NormalizeIntensityd", "ScaleIntensityd"):
            plan.intensity.append((name, {k: v for k, v in args.items() if k not in _IGNORED_ARGS}))

    inferer = r.lookup("inferer", "inferer") if "inferer" in config else {"_target_": "SimpleInferer"}
    if isinstance(inferer, str):
        inferer = r.value(inferer, "inferer")
    if isinstance(inferer, dict):  # MedDL chooses the device: that argument is never read
        inferer = {k: (r.value(v, f"inferer#{k}") if k != "device" else None) for k, v in inferer.items()}
    if not isinstance(inferer, dict) or inferer.get("_target_") not in INFERERS:
        raise ModelError(f"{file}: inferer {inferer.get('_target_') if isinstance(inferer, dict) else inferer!r} "
                         f"is not one MedDL runs ({', '.join(INFERERS)})")
    inferer_name = inferer.pop("_target_")
    _check_args(file, f"inferer {inferer_name!r}", inferer_name, inferer, INFERERS, "inferers MedDL runs")
    inferer.pop("device", None)  # MedDL chooses the device
    plan.inferer = (inferer_name, inferer)

    seen_discretize = False
    for index, (name, args) in enumerate(_steps(r, config.get("postprocessing"), "postprocessing")):
        if name not in POSTPROCESSING:
            plan.notes.append(f"postprocessing step {index + 1} {name!r} not run (MedDL returns one mask per output "
                              "channel on the input's grid instead)")
            continue
        _check_args(file, f"postprocessing step {index + 1} {name!r}", name, args, POSTPROCESSING,
                    "postprocessing MedDL runs")
        if name == "Activationsd":
            plan.activation = "softmax" if args.get("softmax") else "sigmoid" if args.get("sigmoid") else None
        elif name == "AsDiscreted":
            if args.get("argmax"):
                plan.discretize = {"argmax": True}
            elif isinstance(args.get("threshold"), (int, float)):
                plan.discretize = {"threshold": float(args["threshold"])}
            else:
                raise ModelError(f"{file}: AsDiscreted needs argmax or a numeric threshold, got {args}")
            seen_discretize = True
        elif name == "Invertd":
            plan.invert_before_discretize = not seen_discretize
    if not plan.discretize:
        plan.discretize = {"argmax": True} if plan.activation != "sigmoid" else {"threshold": 0.5}
        plan.notes.append(f"no AsDiscreted in the bundle: MedDL uses {plan.discretize}")
    if "modelname" in config:
        weights = r.value(config["modelname"], "modelname")
        if isinstance(weights, str) and weights != "model.pt":
            plan.weights_file = f"models/{Path(weights).name}"
    return plan


def _steps(r: _Resolver, section: Any, where: str) -> list[tuple[str, dict[str, Any]]]:
    """``[(transform name, resolved args)]`` of a ``Compose`` section (empty when absent)."""
    if section is None:
        return []
    if isinstance(section, str):
        section = r.value(section, where)
    transforms = section.get("transforms") if isinstance(section, dict) else section
    if not isinstance(transforms, list):
        raise ModelError(f"{r.file}: {where} must be a Compose with a list of transforms")
    out = []
    for index, step in enumerate(transforms):
        if not isinstance(step, dict) or not isinstance(step.get("_target_"), str):
            raise ModelError(f"{r.file}: {where} step {index + 1} is not a transform with a _target_")
        name = step["_target_"].rpartition(".")[2]
        # only the arguments MedDL reads are resolved; the others (output folders, Invertd's transform) are not
        args = {k: r.value(v, f"{where}#{index}#{k}") if name in _READ_ARGS_OF else v
                for k, v in step.items() if k != "_target_"}
        out.append((name, args))
    return out


def _check_args(file: Path, where: str, name: str, args: Mapping[str, Any], table: Mapping[str, frozenset[str]],
                what: str) -> None:
    if name not in table:
        raise ModelError(f"{file}: {where} is not one of the {what} ({', '.join(table)}); refused")
    extra = sorted(set(args) - table[name] - _IGNORED_ARGS)
    if extra:
        raise ModelError(f"{file}: {where}: argument {extra[0]!r} is not one MedDL supports "
                         f"(it reads: {', '.join(sorted(table[name])) or 'none'}); refused")


def _check_keys(file: Path, name: str, args: Mapping[str, Any], image_key: str) -> None:
    keys = args.get("keys", image_key)
    keys = [keys] if isinstance(keys, str) else keys
    keys = [image_key if k == "@image_key" else k for k in keys]
    if keys != [image_key]:
        raise ModelError(f"{file}: {name} acts on {keys!r}; MedDL runs transforms of the image ({image_key!r}) only")


# ------------------------------------------------------------------------------------------------ import
def import_bundle(src: str | os.PathLike, name: str | None = None, overwrite: bool = False) -> Path:
    """Import a MONAI model-zoo bundle folder into the model cache, offline.

    The bundle's inference config is read into an :class:`InferencePlan` (refusing what MedDL does not run), its
    weights (``models/model.pt``, a state dict, read weights-only) are checked against the network built from
    ``network_def``, and MedDL's package keys are added to the copy's ``configs/metadata.json`` (the bundle's own
    keys are kept; its ``task`` text moves to ``bundle_task``). The copy is then verified like any package.

    Raises:
        ModelError: not a bundle, a step MedDL does not run, no weights (with how to get them), weights that do not
            fit the network (first mismatching key).
    """
    source = Path(src).expanduser()
    if not (source / "configs" / "metadata.json").is_file() or not (source / INFERENCE_FILE).is_file():
        raise ModelError(f"cannot import {source}: not a MONAI bundle folder (needs configs/metadata.json and "
                         f"{INFERENCE_FILE})")
    bundle_meta = read_json(source / "configs" / "metadata.json")
    plan = read_plan(source, bundle_meta)
    weights = source / plan.weights_file
    if not weights.is_file():
        raise ModelError(f"cannot import {source}: no weights at {plan.weights_file}; fetch them with MONAI's tool "
                         f"(python -m monai.bundle download --name {source.name} --bundle_dir <folder>) and import "
                         "that folder")
    name = name or source.resolve().name
    models.cache.check_name(name)
    cache = models.cache_dir()
    dest = cache / name
    if dest.exists() and not overwrite:
        raise ModelError(f"a model named {name!r} is already in {cache}; use --overwrite (or --name)")
    with tempfile.TemporaryDirectory(prefix=".import-", dir=cache) as tmp:
        staged = Path(tmp) / "package"
        models.copy_package_tree(source, staged)
        state = _read_bundle_weights(staged / plan.weights_file)
        models.check_state_fits(models.build_network({"network": plan.network}, on_meta=True).state_dict(), state,
                                f"weights of {source} do not fit its network_def {plan.network['name']!r}")
        import torch

        out = staged / models.WEIGHTS_FILE
        with open(out, "wb") as f:  # the plain state dict MedDL verifies (a {"model": ...} wrapper unwrapped)
            torch.save(state, f)
        meta = package_metadata(bundle_meta, plan, _package.sha256_file(out), source)
        models.write_json(staged / models.METADATA_FILE, meta)
        try:
            _package.verify_package(staged)
        except ModelError as exc:
            raise ModelError(f"cannot import {source}: {exc}") from exc
        _package.install(staged, dest, replace_any=True)
    return dest


def package_metadata(bundle_meta: Mapping[str, Any], plan: InferencePlan, sha256: str, source: Path) -> dict:
    """The bundle's metadata plus MedDL's package keys (see :mod:`MedDLLib.models`)."""
    meta = copy.deepcopy(dict(bundle_meta))
    meta["bundle_task"] = meta.get("task")
    if "required_packages_version" not in meta and "optional_packages_version" in meta:  # the spec's newer name
        meta["required_packages_version"] = meta["optional_packages_version"]
    metrics = meta.get("eval_metrics") if isinstance(meta.get("eval_metrics"), dict) else {}
    meta.update({
        "format": models.FORMAT, "task": BUNDLE_TASK, "version": str(meta.get("version", "0")),
        "recipe": BUNDLE_RECIPE, "network": plan.network,
        "input": {"channels": plan.channels, "axcodes": plan.axcodes, "pixdim_mm": plan.pixdim_mm},
        "output": {"labels": [plan.labels[i] for i in sorted(plan.labels)], "activation": plan.activation},
        "training_data": {"kind": "real", "n_studies": 0,
                          "description": f"{meta.get('data_source', 'see the bundle')} (MONAI model zoo bundle "
                                         f"{source.name}; n_studies not stated in its metadata)"},
        "metrics": metrics, "sha256": sha256, "libraries": models.library_versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "bundle": {"name": source.name, "notes": plan.notes},
    })
    return meta


def _read_bundle_weights(file: Path) -> dict[str, Any]:
    """A bundle's state dict, weights-only (also inside a ``{"model": state_dict}`` checkpoint); pickled objects
    are refused with MedDL's sentence (:data:`MedDLLib.models.PICKLE_REFUSAL`)."""
    import torch

    if file.is_symlink() or not file.is_file():
        raise ModelError(f"{file} is not a regular file inside the bundle")
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - the weights-only reader refused: MedDL's reader says why, in one line
        return models.read_state_dict(file)
    if isinstance(obj, dict) and set(obj) == {"model"} and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                            for k, v in obj.items()):
        raise ModelError(f"{file} is not a state dict (parameter name -> tensor)")
    return obj


# ------------------------------------------------------------------------------------------------ running
def run_bundle(model: "str | os.PathLike | models.ModelPackage", images: Volume | Sequence[Volume], *,
               device: Any = "cpu", roi_size: Sequence[int] | None = None,
               progress: Callable[[float, str], None] | None = None) -> BundleOutput:
    """Run an imported zoo bundle on ``images`` (one volume per input channel, co-registered on one grid).

    Args:
        model: the bundle's name in the cache, its folder, or a loaded package.
        images: the input channels in the bundle's order (``InferencePlan.channels``); the first one's grid is
            the output grid.
        device: where the network runs.
        roi_size: override of the sliding window's size (voxels, i/j/k), e.g. to bound memory on a small machine.
        progress: ``(fraction, message)`` callback.

    Returns:
        :class:`BundleOutput` on the first image's voxel grid.
    """
    import torch

    package = model if isinstance(model, models.ModelPackage) else models.load_package(model)
    plan = read_plan(package.path, package.metadata)
    volumes = [images] if isinstance(images, Volume) else list(images)
    if len(volumes) != len(plan.channels):
        raise InputError(f"bundle {package.name!r} needs {len(plan.channels)} input channel(s) "
                         f"({', '.join(plan.channels)}), got {len(volumes)}")
    reference = volumes[0]
    for other, channel in zip(volumes[1:], plan.channels[1:]):
        if other.array.shape != reference.array.shape or not other.geometry.allclose(reference.geometry, 1e-3):
            raise InputError(f"input channel {channel!r} is not on the grid of {plan.channels[0]!r}; co-register "
                             "the sequences first (the bundle expects them on one grid)")
    report = progress or (lambda fraction, message="": None)
    report(0.05, "resampling to the bundle's grid")
    grid, size = plan_grid(reference.geometry, reference.array.shape[::-1], plan)
    from .resample import resample_to_geometry

    channels = [resample_to_geometry(v, grid, size).array.astype(np.float32) for v in volumes]
    x = np.stack([c.transpose(2, 1, 0) for c in channels])  # [C, i, j, k]: MONAI's array layout
    x = apply_intensity(x, plan.intensity)
    network = package.network(device)
    inferer = _inferer(plan, roi_size)
    report(0.2, "running the network")
    with torch.no_grad():
        logits = inferer(torch.from_numpy(x[None]).to(device), network)[0].float().cpu()
    report(0.85, "back to the input's grid")
    labels_only = "argmax" in plan.discretize and not plan.invert_before_discretize
    if labels_only:  # softmax keeps the order of the logits: argmax them (no second [C, ...] array in memory)
        out = logits.argmax(0).numpy().transpose(2, 1, 0)[None]  # [1, k, j, i] labels on the plan's grid
    elif plan.activation == "softmax":
        out = torch.softmax(logits, dim=0).numpy().transpose(0, 3, 2, 1)  # [C, k, j, i] on the plan's grid
    elif plan.activation == "sigmoid":
        out = torch.sigmoid(logits).numpy().transpose(0, 3, 2, 1)
    else:
        out = logits.numpy().transpose(0, 3, 2, 1)
    del logits
    result = BundleOutput(labels=dict(plan.labels), geometry=reference.geometry, notes=list(plan.notes))
    target = reference.geometry

    def back(array: np.ndarray, is_label: bool) -> np.ndarray:
        moved = resample_to_geometry(Volume(array, grid), target, reference.array.shape[::-1], is_label=is_label)
        return moved.array

    if labels_only:
        result.labelmap = back(out[0].astype(np.int16), True)
    elif "argmax" in plan.discretize:
        back_probs = np.stack([back(c.astype(np.float32), False) for c in out])
        result.labelmap = back_probs.argmax(0).astype(np.int16)
    else:
        threshold = plan.discretize["threshold"]
        for index, channel in enumerate(out):
            if plan.invert_before_discretize:
                mask = (back(channel.astype(np.float32), False) > threshold).astype(np.uint8)
            else:
                mask = back((channel > threshold).astype(np.uint8), True)
            result.masks[plan.labels[index]] = mask
    report(1.0, "done")
    return result


def plan_grid(geometry: Geometry, size_ijk: Sequence[int], plan: InferencePlan) -> tuple[Geometry, tuple[int, ...]]:
    """The grid the network sees: the input's extent in the plan's orientation (RAS) at the plan's spacing.

    Without ``Orientationd`` the input's axes are kept; without ``Spacingd`` its spacing (permuted with the axes).
    """
    if plan.axcodes is None and plan.pixdim_mm is None:
        return geometry, tuple(int(s) for s in size_ijk)
    ijk_to_lps = geometry.ijk_to_lps()
    size = np.asarray(size_ijk, dtype=float)
    corners = np.array([[i, j, k, 1.0] for i in (-0.5, size[0] - 0.5) for j in (-0.5, size[1] - 0.5)
                        for k in (-0.5, size[2] - 0.5)]) @ ijk_to_lps.T
    if plan.axcodes == "RAS":
        direction = np.diag([-1.0, -1.0, 1.0])  # columns: i -> Right, j -> Anterior, k -> Superior (in LPS)
        # the input's spacing along the axis closest to each new axis
        closest = [int(np.argmax(np.abs(geometry.direction.T @ direction[:, a]))) for a in range(3)]
        spacing = np.array([geometry.spacing_mm[c] for c in closest])
    else:
        direction = geometry.direction
        spacing = np.array(geometry.spacing_mm)
    if plan.pixdim_mm is not None:
        spacing = np.array(plan.pixdim_mm, dtype=float)
    coords = corners[:, :3] @ direction  # extent along the new axes (mm)
    low, high = coords.min(0), coords.max(0)
    out_size = np.maximum(1, np.round((high - low) / spacing)).astype(int)
    first_centre = low + spacing / 2 + ((high - low) - out_size * spacing) / 2
    origin = direction @ first_centre
    return Geometry(tuple(spacing), tuple(origin), tuple(map(tuple, direction))), tuple(int(s) for s in out_size)


def apply_intensity(x: np.ndarray, steps: Sequence[tuple[str, Mapping[str, Any]]]) -> np.ndarray:
    """The plan's intensity transforms on ``x`` ``[C, ...]``, with MONAI's own array transforms."""
    from monai.transforms import NormalizeIntensity, ScaleIntensity, ScaleIntensityRange

    classes = {"ScaleIntensityRanged": ScaleIntensityRange, "NormalizeIntensityd": NormalizeIntensity,
               "ScaleIntensityd": ScaleIntensity}
    for name, args in steps:
        try:
            x = np.asarray(classes[name](**args)(x), dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise ModelError(f"{name} with {dict(args)}: {exc}") from exc
    return x


def _inferer(plan: InferencePlan, roi_size: Sequence[int] | None) -> Any:
    from monai.inferers import SimpleInferer, SlidingWindowInferer

    name, args = plan.inferer
    if name == "SimpleInferer":
        return SimpleInferer()
    args = dict(args)
    if roi_size is not None:
        args["roi_size"] = [int(v) for v in roi_size]
    try:
        return SlidingWindowInferer(**args)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"SlidingWindowInferer with {args}: {exc}") from exc
