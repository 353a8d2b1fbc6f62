"""Pure-torch mirrors of the MONAI networks MedDL's tasks build: ``ResNet`` (basic blocks), ``resnet10/18/34`` and
``BasicUNet``.

Why this module exists: ``import monai`` costs about 1.9 s and 190 MB on top of torch, and it cannot be made lazy
(``monai/__init__.py`` loads all its submodules, and ``monai.networks`` pulls in ``monai.apps``, ``monai.data`` and
``monai.transforms``). A cold ``meddl infer`` paid all of that only to build its network. The classes here build
the same networks from ``torch.nn`` alone.

They are *mirrors*, not look-alikes: the module tree (attribute names, layer order, shapes, parameters, buffers)
is MONAI's, so a state dict saved from MONAI's class loads strictly into the mirror and vice versa, and the
outputs agree to float rounding (``Testing/test_nets_mirror.py`` checks keys, shapes, strict loading both ways,
outputs and input gradients against MONAI's own classes). Packages still name MONAI's classes
(``configs/inference.json``'s ``_target_``), so MONAI's bundle tools build MONAI's network from the same weights.

Only a subset of MONAI's arguments is mirrored (basic blocks, shortcut ``"B"``, batch norm and in-place ReLU for
the ResNets; LeakyReLU 0.1, affine instance norm, float dropout and ``"deconv"`` up-sampling for ``BasicUNet``).
:func:`mirror_factory` says whether a given argument set is in that subset; the registry
(:func:`MedDLLib.models.build_network`) builds MONAI's own class for anything else, so behaviour never silently
differs from MONAI's.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ResNetBlock", "ResNet", "resnet10", "resnet18", "resnet34", "BasicUNet", "mirror_factory"]

_CONV: dict[int, type[nn.Module]] = {2: nn.Conv2d, 3: nn.Conv3d}
_DECONV: dict[int, type[nn.Module]] = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_BATCH_NORM: dict[int, type[nn.Module]] = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_INSTANCE_NORM: dict[int, type[nn.Module]] = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
_MAX_POOL: dict[int, type[nn.Module]] = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
_ADAPTIVE_AVG_POOL: dict[int, type[nn.Module]] = {2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}

#: MONAI's default activation/normalisation arguments, the only ones mirrored (JSON lists are read as tuples).
RESNET_ACT: Any = ("relu", {"inplace": True})
RESNET_NORM: Any = "batch"
UNET_ACT: Any = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True})
UNET_NORM: Any = ("instance", {"affine": True})


def _dims(spatial_dims: int) -> int:
    if spatial_dims not in _CONV:
        raise ValueError(f"spatial_dims must be 2 or 3 in MedDL's mirror, got {spatial_dims!r}")
    return int(spatial_dims)


def _as_tuple(value: int | Sequence[int], n: int, name: str) -> tuple[int, ...]:
    """``value`` repeated ``n`` times (an int) or checked to have ``n`` entries (a sequence)."""
    if isinstance(value, numbers.Integral):
        return (int(value),) * n
    values = tuple(int(v) for v in value)
    if len(values) != n:
        raise ValueError(f"{name} must be an int or {n} ints, got {value!r}")
    return values


def _same_layer_arg(value: Any, default: Any) -> bool:
    """Whether an ``act``/``norm`` argument (a name, or ``(name, kwargs)`` as a tuple or JSON list) is ``default``."""
    def canon(v: Any) -> Any:
        if isinstance(v, (list, tuple)) and len(v) == 2 and isinstance(v[1], Mapping):
            return (str(v[0]).lower(), {str(k): v[1][k] for k in v[1]})
        return str(v).lower() if isinstance(v, str) else v

    try:
        return bool(canon(value) == canon(default))
    except Exception:  # noqa: BLE001 - an exotic value is simply not the default
        return False


def _check_layer_arg(value: Any, default: Any, name: str) -> None:
    if not _same_layer_arg(value, default):
        raise ValueError(f"{name}={value!r} is not mirrored (only {default!r}); build MONAI's class instead")


# ---------------------------------------------------------------------------------------------------- ResNet
class ResNetBlock(nn.Module):
    """Basic residual block (two 3^d convolutions), MONAI's ``ResNetBlock``.

    Shapes: ``(B, in_planes, *S)`` -> ``(B, planes, *S / stride)``.
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, spatial_dims: int = 3, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        conv = _CONV[_dims(spatial_dims)]
        norm = _BATCH_NORM[spatial_dims]
        self.conv1 = conv(in_planes, planes, kernel_size=3, padding=1, stride=stride, bias=False)
        self.bn1 = norm(planes)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = conv(planes, planes, kernel_size=3, padding=1, bias=False)
        self.bn2 = norm(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))
        out += shortcut
        return self.act(out)


class ResNet(nn.Module):
    """MONAI's ``ResNet`` with basic blocks (``block="basic"``) and shortcut ``"B"`` (1^d convolution + batch
    norm where the width or the stride changes), for 2D or 3D inputs.

    Args:
        block: ``"basic"`` or :class:`ResNetBlock` (bottleneck blocks are not mirrored).
        layers: blocks per stage (4 stages; stages 2-4 start with stride 2).
        block_inplanes: widths of the 4 stages before ``widen_factor`` (each ``int(w * widen_factor)``).
        spatial_dims: 2 or 3.
        n_input_channels: channels of the input.
        conv1_t_size: kernel size of the stem convolution (padding ``size // 2``), an int or one per dimension.
        conv1_t_stride: stride of the stem convolution, an int or one per dimension.
        no_max_pool: skip the stem's 3^d max pool of stride 2.
        shortcut_type: ``"B"`` only.
        widen_factor: width multiplier of ``block_inplanes``.
        num_classes: outputs of the final ``fc`` layer.
        feed_forward: with ``fc``; without it the output is the pooled features.
        bias_downsample: bias of the shortcut convolutions.
        act, norm: MONAI's defaults only (in-place ReLU, batch norm).

    Shapes: input ``(B, n_input_channels, *S)``; output ``(B, num_classes)`` (or ``(B, widths[3])`` without
    ``fc``).
    """

    def __init__(self, block: Any, layers: Sequence[int], block_inplanes: Sequence[int], spatial_dims: int = 3,
                 n_input_channels: int = 3, conv1_t_size: int | Sequence[int] = 7,
                 conv1_t_stride: int | Sequence[int] = 1, no_max_pool: bool = False, shortcut_type: str = "B",
                 widen_factor: float = 1.0, num_classes: int = 400, feed_forward: bool = True,
                 bias_downsample: bool = True, act: Any = RESNET_ACT, norm: Any = RESNET_NORM) -> None:
        super().__init__()
        if block not in ("basic", ResNetBlock):
            raise ValueError(f"block={block!r} is not mirrored (only 'basic'); build MONAI's class instead")
        if shortcut_type != "B":
            raise ValueError(f"shortcut_type={shortcut_type!r} is not mirrored (only 'B'); build MONAI's class")
        _check_layer_arg(act, RESNET_ACT, "act")
        _check_layer_arg(norm, RESNET_NORM, "norm")
        dims = _dims(spatial_dims)
        if len(layers) != 4 or len(block_inplanes) != 4:
            raise ValueError(f"layers and block_inplanes need 4 entries, got {list(layers)}, {list(block_inplanes)}")
        widths = [int(w * widen_factor) for w in block_inplanes]
        kernel = _as_tuple(conv1_t_size, dims, "conv1_t_size")
        stride = _as_tuple(conv1_t_stride, dims, "conv1_t_stride")
        conv = _CONV[dims]

        self.in_planes = widths[0]
        self.no_max_pool = bool(no_max_pool)
        self.bias_downsample = bool(bias_downsample)
        self.conv1 = conv(n_input_channels, widths[0], kernel_size=kernel, stride=stride,
                          padding=tuple(k // 2 for k in kernel), bias=False)
        self.bn1 = _BATCH_NORM[dims](widths[0])
        self.act = nn.ReLU(inplace=True)
        self.maxpool = _MAX_POOL[dims](kernel_size=3, stride=2, padding=1)
        self.layer1 = self._stage(widths[0], int(layers[0]), dims, stride=1)
        self.layer2 = self._stage(widths[1], int(layers[1]), dims, stride=2)
        self.layer3 = self._stage(widths[2], int(layers[2]), dims, stride=2)
        self.layer4 = self._stage(widths[3], int(layers[3]), dims, stride=2)
        self.avgpool = _ADAPTIVE_AVG_POOL[dims]((1,) * dims)
        self.fc = nn.Linear(widths[3], num_classes) if feed_forward else None

        for m in self.modules():  # MONAI's initialisation (same distributions)
            if isinstance(m, conv):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, _BATCH_NORM[dims]):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.constant_(m.bias, 0)

    def _stage(self, planes: int, blocks: int, dims: int, stride: int) -> nn.Sequential:
        """``blocks`` basic blocks of width ``planes``; the first one has ``stride`` and, where needed, the
        shortcut ``downsample = Sequential(conv 1^d, batch norm)``."""
        downsample = None
        if stride != 1 or self.in_planes != planes:
            downsample = nn.Sequential(
                _CONV[dims](self.in_planes, planes, kernel_size=1, stride=stride, bias=self.bias_downsample),
                _BATCH_NORM[dims](planes))
        stage = [ResNetBlock(self.in_planes, planes, dims, stride, downsample)]
        self.in_planes = planes
        stage += [ResNetBlock(planes, planes, dims) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, *S)`` -> ``(B, num_classes)`` (or pooled features ``(B, width)`` without ``fc``)."""
        x = self.act(self.bn1(self.conv1(x)))
        if not self.no_max_pool:
            x = self.maxpool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.avgpool(x).view(x.size(0), -1)
        return x if self.fc is None else self.fc(x)


#: Blocks per stage of the mirrored ``resnetNN`` constructors (all basic blocks, widths 64-512).
RESNET_LAYERS: dict[str, tuple[int, int, int, int]] = {
    "resnet10": (1, 1, 1, 1), "resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
RESNET_WIDTHS = (64, 128, 256, 512)


def _resnet(arch: str, pretrained: bool, kwargs: dict[str, Any]) -> ResNet:
    if pretrained:
        raise ValueError(f"{arch}: MedDL never loads pretrained weights (pretrained must be False)")
    return ResNet("basic", list(RESNET_LAYERS[arch]), list(RESNET_WIDTHS), **kwargs)


def resnet10(pretrained: bool = False, progress: bool = True, **kwargs: Any) -> ResNet:
    """MONAI's ``resnet10`` (basic blocks ``[1, 1, 1, 1]``, widths 64-512); ``pretrained`` must be False."""
    return _resnet("resnet10", pretrained, kwargs)


def resnet18(pretrained: bool = False, progress: bool = True, **kwargs: Any) -> ResNet:
    """MONAI's ``resnet18`` (basic blocks ``[2, 2, 2, 2]``, widths 64-512); ``pretrained`` must be False."""
    return _resnet("resnet18", pretrained, kwargs)


def resnet34(pretrained: bool = False, progress: bool = True, **kwargs: Any) -> ResNet:
    """MONAI's ``resnet34`` (basic blocks ``[3, 4, 6, 3]``, widths 64-512); ``pretrained`` must be False."""
    return _resnet("resnet34", pretrained, kwargs)


# ------------------------------------------------------------------------------------------------- BasicUNet
class _ConvNormDropAct(nn.Sequential):
    """MONAI's ``Convolution`` as BasicUNet uses it: ``conv`` (3^d, padding 1), then ``adn`` = instance norm ``N``
    (affine), dropout ``D``, LeakyReLU(0.1) ``A``. Shapes: ``(B, c_in, *S)`` -> ``(B, c_out, *S)``."""

    def __init__(self, dims: int, c_in: int, c_out: int, bias: bool, dropout: float) -> None:
        super().__init__()
        self.add_module("conv", _CONV[dims](c_in, c_out, kernel_size=3, stride=1, padding=1, bias=bias))
        adn = nn.Sequential()
        adn.add_module("N", _INSTANCE_NORM[dims](c_out, affine=True))
        adn.add_module("D", nn.Dropout(dropout))
        adn.add_module("A", nn.LeakyReLU(negative_slope=0.1, inplace=True))
        self.add_module("adn", adn)


class _TwoConv(nn.Sequential):
    """``conv_0``, ``conv_1``: two :class:`_ConvNormDropAct`. Shapes: ``(B, c_in, *S)`` -> ``(B, c_out, *S)``."""

    def __init__(self, dims: int, c_in: int, c_out: int, bias: bool, dropout: float) -> None:
        super().__init__()
        self.add_module("conv_0", _ConvNormDropAct(dims, c_in, c_out, bias, dropout))
        self.add_module("conv_1", _ConvNormDropAct(dims, c_out, c_out, bias, dropout))


class _Down(nn.Sequential):
    """``max_pooling`` (2^d, floor) then ``convs``. Shapes: ``(B, c_in, *S)`` -> ``(B, c_out, *floor(S / 2))``."""

    def __init__(self, dims: int, c_in: int, c_out: int, bias: bool, dropout: float) -> None:
        super().__init__()
        self.add_module("max_pooling", _MAX_POOL[dims](kernel_size=2))
        self.add_module("convs", _TwoConv(dims, c_in, c_out, bias, dropout))


class _Deconv(nn.Sequential):
    """MONAI's ``UpSample(mode="deconv")``: one transposed convolution ``deconv``, kernel and stride 2."""

    def __init__(self, dims: int, c_in: int, c_out: int) -> None:
        super().__init__()
        self.add_module("deconv", _DECONV[dims](c_in, c_out, kernel_size=2, stride=2))


class _UpCat(nn.Module):
    """Up-sample ``x`` by 2, pad it to the encoder map, concatenate ``[x_e, up(x)]``, two convolutions.

    As MONAI's ``UpCat`` (``is_pad=True``): where the encoder map is one voxel longer (an odd size before the
    pooling), the up-sampled map gets one replicated voxel at the end of that axis.

    Shapes: ``x (B, c_in, *s)``, ``x_e (B, c_cat, *S)`` with ``S in {2s, 2s + 1}`` -> ``(B, c_out, *S)``.
    """

    def __init__(self, dims: int, c_in: int, c_cat: int, c_out: int, bias: bool, dropout: float,
                 halves: bool = True) -> None:
        super().__init__()
        c_up = c_in // 2 if halves else c_in
        self.upsample = _Deconv(dims, c_in, c_up)
        self.convs = _TwoConv(dims, c_cat + c_up, c_out, bias, dropout)
        self.is_pad = True

    def forward(self, x: torch.Tensor, x_e: torch.Tensor) -> torch.Tensor:
        up = self.upsample(x)
        pad: list[int] = []
        for axis in range(up.dim() - 1, 1, -1):  # F.pad order: last axis first, (before, after) per axis
            pad += [0, 1 if x_e.shape[axis] != up.shape[axis] else 0]
        if any(pad):
            up = F.pad(up, pad, mode="replicate")
        return self.convs(torch.cat([x_e, up], dim=1))


class BasicUNet(nn.Module):
    """MONAI's ``BasicUNet`` (5 levels, max-pool down, transposed-convolution up, LeakyReLU 0.1, affine instance
    norm), for 2D or 3D inputs.

    Args:
        spatial_dims: 2 or 3.
        in_channels, out_channels: channels of the input and of the logits.
        features: six widths: the five encoder levels, then the last decoder level.
        act, norm: MONAI's defaults only (LeakyReLU 0.1 in place; instance norm, affine).
        bias: bias of the 3^d convolutions.
        dropout: dropout probability after every normalisation (a float).
        upsample: ``"deconv"`` only.

    Shapes: input ``(B, in_channels, *S)``; output logits ``(B, out_channels, *S)``. Sizes divisible by 16 need
    no padding; other sizes are handled as MONAI handles them (see :class:`_UpCat`).
    """

    def __init__(self, spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 2,
                 features: Sequence[int] = (32, 32, 64, 128, 256, 32), act: Any = UNET_ACT, norm: Any = UNET_NORM,
                 bias: bool = True, dropout: float = 0.0, upsample: str = "deconv") -> None:
        super().__init__()
        _check_layer_arg(act, UNET_ACT, "act")
        _check_layer_arg(norm, UNET_NORM, "norm")
        if upsample != "deconv":
            raise ValueError(f"upsample={upsample!r} is not mirrored (only 'deconv'); build MONAI's class instead")
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real):
            raise ValueError(f"dropout must be a number in the mirror, got {dropout!r}")
        dims = _dims(spatial_dims)
        f = [int(v) for v in features]
        if len(f) != 6:
            raise ValueError(f"features must have 6 entries, got {list(features)!r}")
        p = float(dropout)
        self.conv_0 = _TwoConv(dims, in_channels, f[0], bias, p)
        self.down_1 = _Down(dims, f[0], f[1], bias, p)
        self.down_2 = _Down(dims, f[1], f[2], bias, p)
        self.down_3 = _Down(dims, f[2], f[3], bias, p)
        self.down_4 = _Down(dims, f[3], f[4], bias, p)
        self.upcat_4 = _UpCat(dims, f[4], f[3], f[3], bias, p)
        self.upcat_3 = _UpCat(dims, f[3], f[2], f[2], bias, p)
        self.upcat_2 = _UpCat(dims, f[2], f[1], f[1], bias, p)
        self.upcat_1 = _UpCat(dims, f[1], f[0], f[5], bias, p, halves=False)
        self.final_conv = _CONV[dims](f[5], out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, *S)`` -> logits ``(B, out_channels, *S)``."""
        x0 = self.conv_0(x)
        x1 = self.down_1(x0)
        x2 = self.down_2(x1)
        x3 = self.down_3(x2)
        x4 = self.down_4(x3)
        u = self.upcat_4(x4, x3)
        u = self.upcat_3(u, x2)
        u = self.upcat_2(u, x1)
        u = self.upcat_1(u, x0)
        return self.final_conv(u)


# ------------------------------------------------------------------------------------------------ the subset
def _is_int(v: Any, low: int = 1) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and int(v) >= low


def _is_ints(v: Any, n: int, low: int = 1) -> bool:
    return (_is_int(v, low) or (isinstance(v, (list, tuple)) and len(v) == n and all(_is_int(e, low) for e in v)))


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool)


def _resnet_args_supported(args: Mapping[str, Any]) -> bool:
    dims = args.get("spatial_dims", 3)
    if not _is_int(dims) or dims not in (2, 3):
        return False
    checks: dict[str, Callable[[Any], bool]] = {
        "spatial_dims": lambda v: True,
        "n_input_channels": _is_int,
        "conv1_t_size": lambda v: _is_ints(v, dims),
        "conv1_t_stride": lambda v: _is_ints(v, dims),
        "no_max_pool": _is_bool,
        "shortcut_type": lambda v: v == "B",
        "widen_factor": lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool) and 0 < v < 1e4,
        "num_classes": _is_int,
        "feed_forward": _is_bool,
        "bias_downsample": _is_bool,
        "act": lambda v: _same_layer_arg(v, RESNET_ACT),
        "norm": lambda v: _same_layer_arg(v, RESNET_NORM),
        "pretrained": lambda v: True,  # the registry forces pretrained=False
        "progress": _is_bool,
    }
    if not all(k in checks and checks[k](v) for k, v in args.items()):
        return False
    widen = float(args.get("widen_factor", 1.0))
    return all(int(w * widen) >= 1 for w in RESNET_WIDTHS)


def _unet_args_supported(args: Mapping[str, Any]) -> bool:
    dims = args.get("spatial_dims", 3)
    if not _is_int(dims) or dims not in (2, 3):
        return False
    checks: dict[str, Callable[[Any], bool]] = {
        "spatial_dims": lambda v: True,
        "in_channels": _is_int,
        "out_channels": _is_int,
        "features": lambda v: isinstance(v, (list, tuple)) and len(v) == 6 and all(_is_int(e) for e in v),
        "act": lambda v: _same_layer_arg(v, UNET_ACT),
        "norm": lambda v: _same_layer_arg(v, UNET_NORM),
        "bias": _is_bool,
        "dropout": lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool) and 0.0 <= v <= 1.0,
        "upsample": lambda v: v == "deconv",
    }
    return all(k in checks and checks[k](v) for k, v in args.items())


#: MONAI network name -> (the mirror's factory, whether an argument set is in the mirrored subset).
_MIRRORS: dict[str, tuple[Callable[..., nn.Module], Callable[[Mapping[str, Any]], bool]]] = {
    "resnet10": (resnet10, _resnet_args_supported),
    "resnet18": (resnet18, _resnet_args_supported),
    "resnet34": (resnet34, _resnet_args_supported),
    "BasicUNet": (BasicUNet, _unet_args_supported),
}
#: MONAI networks (short names) this module mirrors for some argument sets.
MIRRORED: tuple[str, ...] = tuple(_MIRRORS)


def mirror_factory(name: str, args: Mapping[str, Any]) -> Callable[..., nn.Module] | None:
    """The mirror's factory for MONAI network ``name`` (short name, e.g. ``"BasicUNet"``) called with ``args``,
    or None when the name or any argument is outside the mirrored subset (then MONAI's own class is built).

    Ill-formed arguments (wrong types, non-positive sizes) are also left to MONAI, so its own error is raised.
    """
    entry = _MIRRORS.get(name)
    if entry is None or not isinstance(args, Mapping) or not all(isinstance(k, str) for k in args):
        return None
    factory, supported = entry
    return factory if supported(args) else None
