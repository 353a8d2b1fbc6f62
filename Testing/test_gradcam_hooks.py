"""MedDLLib.gradcam.compute_gradcam on torch hooks: the same maps as ``monai.visualize.GradCAM`` (the method it
replaces without importing MONAI), and the prediction from the same forward."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from MedDLLib.gradcam import compute_gradcam


def _small_resnet():
    from ICHDetectorLib.model import ich_resnet2d

    torch.manual_seed(0)
    return ich_resnet2d(9, 6, (8, 8, 16, 16)).eval()


@pytest.mark.parametrize("class_index", [0, 3, None])
def test_maps_equal_monai_gradcam(class_index):
    from monai.visualize import GradCAM

    network = _small_resnet()
    x = torch.rand(3, 9, 32, 32, generator=torch.Generator().manual_seed(1))
    ours = compute_gradcam(network, x, "layer3", class_index=class_index)
    cam = GradCAM(nn_module=network, target_layers="layer3", postprocessing=lambda z: z)
    theirs = cam(x=x, class_idx=class_index).detach().numpy()[:, 0]
    theirs = theirs / theirs.max()
    assert ours.shape == (3, 32, 32) and ours.dtype == np.float32
    assert np.abs(ours - theirs).max() < 1e-5


def test_logits_are_the_forward_and_the_network_is_left_as_it_was():
    from LungSurvivalLib.model import SmallCNN3D

    torch.manual_seed(2)
    network = SmallCNN3D(1, 1, 4).eval()
    x = torch.rand(2, 1, 12, 16, 16)
    plain = compute_gradcam(network, x, "features.8", class_index=0)
    again, logits = compute_gradcam(network, x, "features.8", class_index=0, return_logits=True)
    assert np.array_equal(plain, again)
    with torch.no_grad():
        assert np.abs(logits - network(x).numpy()).max() < 1e-5
    assert not network.training
    assert all(p.grad is None for p in network.parameters())  # no weight gradients left behind
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in network.modules())  # nor hooks


def test_batches_give_the_maps_of_one_pass_normalised_together():
    """``batch_size`` bounds memory to one batch's graph; the maps are still normalised over all the inputs (a slice
    without evidence stays dark beside one with it), and ``cancel`` stops before a batch."""
    from MedDLLib.errors import Cancelled

    network = _small_resnet()
    x = torch.rand(5, 9, 32, 32, generator=torch.Generator().manual_seed(5))
    whole, logits = compute_gradcam(network, x, "layer3", class_index=2, return_logits=True)
    done = []
    batched, batched_logits = compute_gradcam(network, x, "layer3", class_index=2, return_logits=True, batch_size=2,
                                              progress=lambda fraction, message: done.append(fraction))
    assert done == [0.4, 0.8, 1.0]
    assert batched.shape == whole.shape == (5, 32, 32)
    assert np.abs(batched - whole).max() < 1e-5 and np.abs(batched_logits - logits).max() < 1e-5
    assert whole.max() == pytest.approx(1.0) and len({float(m.max()) for m in whole}) > 1  # one maximum for all
    calls = []
    with pytest.raises(Cancelled):
        compute_gradcam(network, x, "layer3", class_index=2, batch_size=2, cancel=lambda: calls.append(1) or
                        len(calls) > 2)
    assert len(calls) == 3  # polled before each batch: the third batch did not run
    with pytest.raises(ValueError, match="empty"):
        compute_gradcam(network, x[:0], "layer3", class_index=2)


def test_a_score_explains_what_a_wrapper_module_would():
    """``score`` turns the network's output into the class scores Grad-CAM explains (a segmentation network's mean
    positive logit): the maps of a wrapper module computing the same, on the network itself (whose runner then
    records what ran), and the output returned is the network's own."""
    from MedDLLib.models.nets import BasicUNet

    torch.manual_seed(6)
    network = BasicUNet(spatial_dims=2, in_channels=3, out_channels=1, features=(4, 4, 8, 8, 16, 4)).eval()

    def score(logits):
        return torch.relu(logits).mean(dim=(2, 3))

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = network

        def forward(self, x):
            return score(self.net(x))

    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    maps, output = compute_gradcam(network, x, "upcat_2", class_index=0, score=score, return_logits=True)
    wrapped = compute_gradcam(Wrapped(), x, "net.upcat_2", class_index=0)
    assert np.abs(maps - wrapped).max() < 1e-5 and maps.max() > 0
    with torch.no_grad():
        assert output.shape == (3, 1, 32, 32) and np.abs(output - network(x).numpy()).max() < 1e-5


def test_gradcam_does_not_import_monai():
    code = ("import sys, torch; from MedDLLib.gradcam import compute_gradcam; "
            "net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.LazyLinear(1)); "
            "net(torch.zeros(1, 1, 8, 8)); compute_gradcam(net, torch.rand(1, 1, 8, 8), '0', class_index=0); "
            "assert 'monai' not in sys.modules, 'monai imported'")
    import subprocess

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("case", ["inside", "rotated", "partly_outside", "outside"])
def test_heatmap_over_the_crop_box_equals_the_whole_volume_resample(case):
    """heatmap_to_reference resamples only the network grid's bounding box: the same values as resampling the
    whole reference volume (the former way), zero elsewhere."""
    from MedDLLib.geometry import Geometry, Volume
    from MedDLLib.gradcam import heatmap_to_reference
    from MedDLLib.resample import resample_to_reference

    rng = np.random.default_rng(4)
    reference = Volume(np.zeros((30, 40, 50), np.int16), Geometry((0.8, 0.8, 2.5), (-20.0, -16.0, 5.0)))
    origins = {"inside": (-5.0, -4.0, 20.0), "rotated": (-5.0, -4.0, 20.0), "partly_outside": (-30.0, 2.0, 50.0),
               "outside": (500.0, 0.0, 0.0)}
    c, s = np.cos(0.4), np.sin(0.4)
    direction = ((c, s, 0.0), (-s, c, 0.0), (0.0, 0.0, 1.0)) if case == "rotated" else \
        ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    grid = Geometry((1.5, 1.5, 3.0), origins[case], direction)
    heat = rng.random((8, 12, 10)).astype(np.float32)
    fast = heatmap_to_reference(heat, grid, reference)
    whole = resample_to_reference(Volume(heat, grid, {}), reference, default_value=0.0)
    expected = np.clip(whole.array, 0.0, 1.0)
    assert fast.array.dtype == np.float32 and fast.array.shape == reference.array.shape
    assert np.abs(fast.array - expected).max() < 1e-6
    assert (fast.array > 0).any() == (case != "outside")
    assert fast.geometry.allclose(reference.geometry)


def test_bf16_grad_cam_only_where_measured_to_agree(tmp_path, monkeypatch):
    """bf16=None: a network attached to its package measures fp32 against bf16 once per layer and shape (the first
    call returns the fp32 maps), records the choice beside the runtime export, and later calls stay within the
    tolerance of fp32; without bf16 dot products (or a package), or under ``$MEDDL_RUNTIME=torch``, it is fp32 and
    nothing is recorded."""
    import json

    from ICHDetectorLib.model import load_model, untrained_package

    from MedDLLib import gradcam, runtime

    # the trunk stays in torch (a loaded machine could time this tiny trunk slower than a runtime's start-up):
    # the precision choice is what this test measures; Testing/runtime_checks.py checks the trunk on a runtime
    monkeypatch.setattr(gradcam, "TRUNK_MIN_TORCH_SECONDS", float("inf"))
    package_folder = untrained_package(tmp_path, 32)
    x = torch.rand(4, 9, 32, 32, generator=torch.Generator().manual_seed(3))
    network, _ = load_model(package_folder)
    fp32 = compute_gradcam(network, x, "layer3", class_index=0, bf16=False)
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)
    assert np.array_equal(compute_gradcam(network, x, "layer3", class_index=0), fp32)
    record = package_folder / "runtime" / runtime.RECORD
    assert not record.exists() or "gradcam" not in json.loads(record.read_text())
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
    monkeypatch.setenv(runtime.ENV, "torch")  # forced torch: the fp32 reference, nothing measured or recorded
    assert np.array_equal(compute_gradcam(network, x, "layer3", class_index=0), fp32)
    assert not record.exists() or "gradcam" not in json.loads(record.read_text())
    monkeypatch.setenv(runtime.ENV, "auto")
    first = compute_gradcam(network, x, "layer3", class_index=0)
    assert np.array_equal(first, fp32)  # the measuring call answers with the fp32 maps
    choice = json.loads(record.read_text())["gradcam"]["layer3:gradcam:0:9x32x32"]
    assert set(choice) == {"bf16", "max_map_difference", "seconds", "machine"}
    assert choice["bf16"] is False or choice["max_map_difference"] <= gradcam.BF16_MAP_TOLERANCE
    assert choice["machine"] == runtime.machine()
    network, _ = load_model(package_folder)  # a later run reads the choice
    later = compute_gradcam(network, x, "layer3", class_index=0)
    assert np.abs(later - fp32).max() <= gradcam.BF16_MAP_TOLERANCE
    # the package copied to another machine: the choice made here does not hold there; it is measured again
    data = json.loads(record.read_text())
    data["gradcam"]["layer3:gradcam:0:9x32x32"]["machine"] = {**runtime.machine(), "cpu": "another CPU"}
    data["gradcam"]["layer3:gradcam:0:9x32x32"]["bf16"] = True
    record.write_text(json.dumps(data))
    network, _ = load_model(package_folder)
    assert np.array_equal(compute_gradcam(network, x, "layer3", class_index=0), fp32)  # measured: fp32 maps
    top = json.loads(record.read_text())["gradcam"]["layer3:gradcam:0:9x32x32"]
    assert top["machine"] == runtime.machine() and [e["machine"]["cpu"] for e in top["others"]] == ["another CPU"]


def test_split_at_cuts_a_network_into_trunk_and_head_where_nothing_else_crosses():
    """``split_at``: the trunk gives the target layer's output and the head the network's output from it
    (``head(trunk(x)) == network(x)``, on the network's own parameters); a U-Net (shape-dependent padding) and a cut
    that a skip connection crosses give None."""
    from LGGSegmenterLib.model import TASK, network_spec
    from MedDLLib.gradcam import split_at
    from MedDLLib.models import build_network

    network = _small_resnet()
    x = torch.rand(2, 9, 32, 32, generator=torch.Generator().manual_seed(4))
    trunk, head = split_at(network, "layer3")
    with torch.no_grad():
        activation = trunk(x)
        assert activation.shape[1] == 16 and torch.allclose(head(activation), network(x), atol=1e-6)
    ids = {id(p) for p in trunk.parameters()}  # the network's own parameters; the trunk stops at layer3
    assert ids <= {id(p) for p in network.parameters()} and not ids & {id(p) for p in network.layer4.parameters()}

    class Skip(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.Conv2d(2, 2, 3, padding=1)

        def forward(self, x):
            y = self.a(x)
            return self.b(y) + y  # ``y`` reaches the output past ``b``

    assert split_at(Skip(), "b") is None and split_at(Skip(), "a") is not None
    assert split_at(network, "not_a_layer") is None
    unet = build_network({"task": TASK, "network": network_spec("unet", 3, 4)})
    assert split_at(unet, "upcat_2") is None
