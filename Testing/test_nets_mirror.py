"""MedDLLib.models.nets, the pure-torch mirrors of MONAI's ResNet and BasicUNet: for every configuration the tasks
build, MONAI's class and the mirror have the same state-dict keys (in order) and shapes, load each other's weights
strictly, and give the same outputs (eval mode, and batch norm in train mode once) and input gradients; the same
seed gives the same initial weights (the pipeline's reference outputs come from seeded random packages); argument
sets outside the mirrored subset build MONAI's class; and `meddl infer ich|lgg` finish without importing MONAI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from torch import nn

import monai.networks.nets as monai_nets
import pipeline_cases as pc
from MedDLLib import models
from MedDLLib.models import nets

OUT_TOL = 1e-5


def _randomise(net: nn.Module, seed: int = 0) -> None:
    """Every parameter and buffer to seeded random values (batch-norm variances positive), so that eval-mode
    normalisation and biases take part in the comparison (MONAI's init leaves them at 0/1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if t.is_floating_point():
                values = torch.rand(t.shape, generator=g) * 0.5 + 0.75 if name.endswith("running_var") else \
                    torch.randn(t.shape, generator=g) * 0.2
                t.copy_(values)


def _output(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Output and the gradient of a fixed projection of it w.r.t. the input."""
    x = x.clone().requires_grad_(True)
    y = net(x)
    weights = torch.linspace(-1.0, 1.0, y.numel()).reshape(y.shape)
    (y * weights).sum().backward()
    return y.detach(), x.grad.detach()


def assert_mirrors(reference: nn.Module, mirror: nn.Module, x: torch.Tensor, train_bn: bool = False) -> None:
    """``mirror`` is ``reference`` (MONAI's): keys, shapes, strict loading both ways, outputs, input gradients."""
    ref_state, mirror_state = reference.state_dict(), mirror.state_dict()
    assert list(ref_state) == list(mirror_state)
    assert {k: tuple(v.shape) for k, v in ref_state.items()} == {k: tuple(v.shape) for k, v in mirror_state.items()}
    reference.load_state_dict(mirror_state, strict=True)  # the mirror's weights load into MONAI's class
    _randomise(reference)
    mirror.load_state_dict(reference.state_dict(), strict=True)  # and MONAI's into the mirror
    reference.eval()
    mirror.eval()
    y_ref, g_ref = _output(reference, x)
    y_mir, g_mir = _output(mirror, x)
    assert y_ref.shape == y_mir.shape
    assert (y_ref - y_mir).abs().max().item() <= OUT_TOL
    assert torch.allclose(g_ref, g_mir, rtol=1e-4, atol=1e-5)
    if train_bn:  # batch statistics and the running-average update
        reference.train()
        mirror.train()
        with torch.no_grad():
            assert (reference(x) - mirror(x)).abs().max().item() <= OUT_TOL
        for (k, a), b in zip(reference.state_dict().items(), mirror.state_dict().values()):
            assert torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-6), k


def assert_same_init(build_reference: Callable[[], nn.Module], build_mirror: Callable[[], nn.Module]) -> None:
    """The same seed gives the same weights and leaves the generator in the same state."""
    torch.manual_seed(7)
    reference, after_reference = build_reference().state_dict(), torch.rand(3)
    torch.manual_seed(7)
    mirror, after_mirror = build_mirror().state_dict(), torch.rand(3)
    assert all(torch.equal(reference[k], mirror[k]) for k in reference)
    assert torch.equal(after_reference, after_mirror)


def _randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1))


# ------------------------------------------------------------------------------------------------------ ICH
def test_ich_improved_network_is_monai_resnet():
    from ICHDetectorLib import model as ich

    meta = ich.package_metadata(ich.recipe("improved", 64), {"kind": "synthetic", "n_studies": 0})
    args = meta["network"]["args"]
    mirror = models.build_network(meta)
    assert isinstance(mirror, nets.ResNet)

    def reference() -> nn.Module:
        return monai_nets.ResNet(block="basic", layers=[1, 1, 1, 1], block_inplanes=[16, 32, 64, 128],
                                 spatial_dims=2, n_input_channels=args["in_channels"], conv1_t_size=3,
                                 conv1_t_stride=1, num_classes=args["num_classes"])

    assert_same_init(reference, lambda: ich.ich_resnet2d(**args))
    assert_mirrors(reference(), mirror, _randn(2, args["in_channels"], 64, 64), train_bn=True)


# --------------------------------------------------------------------------------------------------- glioma
@pytest.mark.parametrize("conv1_t_stride, output_stride", [(2, 4), (2, 8), (2, 16), (1, 2), (1, 16)])
def test_glioma_evidence_resnet10_body_is_monai_resnet10(conv1_t_stride, output_stride, monkeypatch):
    """EvidenceResNet10 on the mirror's resnet10 vs on MONAI's, at the stem and output strides the recipes use."""
    from GliomaClassifierLib.model import EvidenceResNet10

    kwargs: dict[str, Any] = {"n_input_channels": 2, "conv1_t_stride": conv1_t_stride,
                              "output_stride": output_stride, "widen_factor": 0.25}
    mirror = EvidenceResNet10(**kwargs)
    assert isinstance(mirror.layer1[0], nets.ResNetBlock)
    with monkeypatch.context() as patch:
        patch.setattr(nets, "resnet10", monai_nets.resnet10)  # EvidenceResNet10 imports it when built
        reference = EvidenceResNet10(**kwargs)
    assert type(reference.layer1[0]).__module__.startswith("monai.")
    x = _randn(2, 2, 16, 32, 32)
    assert_mirrors(reference, mirror, x, train_bn=True)
    assert mirror.evidence_map(x).shape[2:] == tuple(-(-s // output_stride) for s in x.shape[2:])


def test_glioma_seed_network_is_monai_resnet10():
    from GliomaClassifierLib import model as glioma

    r = glioma.recipe("seed", size=32, depth=16, widen_factor=0.25)
    args = r.network_args()
    mirror = glioma.build(r)
    assert isinstance(mirror, nets.ResNet)
    assert_same_init(lambda: monai_nets.resnet10(**args), lambda: glioma.build(r))
    assert_mirrors(monai_nets.resnet10(**args), mirror, _randn(2, 1, 16, 32, 32), train_bn=True)


# ------------------------------------------------------------------------------------------------------ LGG
def test_lgg_default_unet_is_monai_basicunet():
    from LGGSegmenterLib import model as lgg

    spec = lgg.network_spec("unet", 3)
    mirror = models.build_network({"task": "lgg", "network": spec})
    assert isinstance(mirror, nets.BasicUNet)
    assert_same_init(lambda: monai_nets.BasicUNet(**spec["args"]),
                     lambda: models.build_network({"task": "lgg", "network": spec}))
    assert_mirrors(monai_nets.BasicUNet(**spec["args"]), mirror, _randn(1, 3, 64, 64))


@pytest.mark.parametrize("dims, shape", [(2, (45, 51)), (3, (33, 36, 41))])
def test_basicunet_odd_sizes_are_padded_like_monai(dims, shape):
    """Sizes not divisible by 16: MONAI's UpCat pads the up-sampled map by one replicated voxel."""
    args = {"spatial_dims": dims, "in_channels": 2, "out_channels": 3, "features": [4, 4, 8, 8, 16, 4],
            "dropout": 0.1, "bias": False}
    mirror = models.build_network({"network": {"name": "monai.networks.nets.BasicUNet", "args": args}})
    assert isinstance(mirror, nets.BasicUNet)
    assert_mirrors(monai_nets.BasicUNet(**args), mirror, _randn(1, 2, *shape))


def test_resnet_3d_stem_and_2d_tuple_arguments():
    for args, shape in [
        ({"spatial_dims": 3, "n_input_channels": 1, "conv1_t_size": 7, "conv1_t_stride": 2, "widen_factor": 0.125,
          "num_classes": 3, "bias_downsample": False, "no_max_pool": True}, (2, 1, 12, 20, 20)),
        ({"spatial_dims": 2, "n_input_channels": 3, "conv1_t_size": [5, 3], "conv1_t_stride": [2, 1],
          "widen_factor": 0.25, "num_classes": 2}, (2, 3, 40, 36)),
    ]:
        mirror = models.build_network({"network": {"name": "resnet18", "args": args}})
        assert isinstance(mirror, nets.ResNet)
        assert_mirrors(monai_nets.resnet18(**args), mirror, _randn(*shape), train_bn=True)


# ------------------------------------------------------------------------------------------------- registry
@pytest.mark.parametrize("name, args", [
    ("BasicUNet", {"spatial_dims": 2, "features": [4, 4, 8, 8, 16, 4], "upsample": "nontrainable"}),
    ("BasicUNet", {"spatial_dims": 2, "features": [4, 4, 8, 8, 16, 4], "norm": "batch"}),
    ("BasicUNet", {"spatial_dims": 2, "features": [4, 4, 8, 8, 16, 4], "act": "relu"}),
    ("BasicUNet", {"spatial_dims": 1, "features": [4, 4, 8, 8, 16, 4]}),
    ("BasicUNet", {"spatial_dims": 2, "features": [4, 4, 8, 8, 16, 4], "dropout": ("dropout", {"p": 0.1})}),
    ("resnet18", {"spatial_dims": 2, "n_input_channels": 1, "shortcut_type": "A", "widen_factor": 0.125}),
    ("resnet10", {"spatial_dims": 2, "n_input_channels": 1, "norm": ("batch", {"momentum": 0.2}),
                  "widen_factor": 0.125}),
    ("resnet50", {"spatial_dims": 2, "n_input_channels": 1, "widen_factor": 0.125}),
])
def test_arguments_outside_the_mirror_build_monai(name, args):
    net = models.build_network({"network": {"name": name, "args": args}})
    assert type(net).__module__.startswith("monai.networks.nets."), type(net)
    assert nets.mirror_factory(name, args) is None


def test_target_stays_monai_and_bad_arguments_get_monais_error():
    assert models.registry.network_target("BasicUNet") == "monai.networks.nets.BasicUNet"
    assert models.registry.network_target("monai.networks.nets.resnet10") == "monai.networks.nets.resnet10"
    for bad in ({"features": [4, 4, 8]}, {"spatial_dims": 2.0, "features": [4, 4, 8, 8, 16, 4]}):
        assert nets.mirror_factory("BasicUNet", bad) is None
        with pytest.raises(models.ModelError, match="cannot build network 'BasicUNet'"):
            models.build_network({"network": {"name": "BasicUNet", "args": bad}})
    skeleton = models.build_network({"network": {"name": "resnet10", "args": {"spatial_dims": 3}}}, on_meta=True)
    assert isinstance(skeleton, nets.ResNet) and skeleton.conv1.weight.is_meta


def test_mirror_refuses_what_it_does_not_mirror():
    with pytest.raises(ValueError, match="not mirrored"):
        nets.BasicUNet(spatial_dims=2, upsample="pixelshuffle")
    with pytest.raises(ValueError, match="not mirrored"):
        nets.ResNet("bottleneck", [1, 1, 1, 1], [8, 8, 8, 8])
    with pytest.raises(ValueError, match="pretrained"):
        nets.resnet10(pretrained=True)


# ------------------------------------------------------------------------------------------ no MONAI import
#: Runs ``python -m MODULE ARGS`` (given as arguments) and reports at exit whether MONAI was imported.
REPORT_MONAI = ("import atexit, sys\n"
                "atexit.register(lambda: print('MONAI_IMPORTED=' + str(any(m == 'monai' or m.startswith('monai.') "
                "for m in sys.modules)), file=sys.stderr))\n")
RUN_MODULE = REPORT_MONAI + ("import runpy\nsys.argv = sys.argv[1:]\n"
                             "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n")


def _child(code: str, *args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=600)


def test_monai_reporter_sees_an_import():
    """Negative control: the reporter says True where MONAI is imported."""
    proc = _child(REPORT_MONAI + "import monai.networks.nets\n")
    assert proc.returncode == 0, proc.stderr
    assert "MONAI_IMPORTED=True" in proc.stderr


def test_infer_ich_and_lgg_do_not_import_monai(tmp_path: Path):
    from ICHDetectorLib import phantom as ich_phantom
    from ICHDetectorLib.model import untrained_package as ich_package
    from MedDLLib.dicomwrite import write_series

    volume, _, _ = ich_phantom.head_ct(np.random.default_rng(5), 48, 8, ("intraparenchymal",))
    write_series(tmp_path / "ich_study", volume.with_array(volume.array.astype(np.int16)))
    runs = {"ich": (tmp_path / "ich_study", ich_package(tmp_path / "ich_model", 64))}
    proc = pc.meddl("phantom", "lgg", tmp_path / "lgg_data", "--cases", "1", "--size", "40", "--slices", "8",
                    "--seed", "4")
    assert proc.returncode == 0, proc.stderr
    case = next(p for p in sorted((tmp_path / "lgg_data" / "kaggle_3m").iterdir()) if p.is_dir())
    runs["lgg"] = (case, pc.lgg_untrained_package(tmp_path / "lgg_model"))
    for task, (study, model) in runs.items():
        out = tmp_path / f"{task}_out"
        proc = _child(RUN_MODULE, "MedDLLib.cli", "infer", task, "--input", study, "--model", model, "--output", out)
        assert proc.returncode == 0, proc.stderr
        assert (out / "result.json").is_file()
        assert "MONAI_IMPORTED=False" in proc.stderr, f"{task}: {proc.stderr[-2000:]}"
