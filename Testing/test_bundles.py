"""MONAI bundles: MedDL packages are bundles; model-zoo bundles import offline and run through the allow-list with
the input's geometry kept (random weights built from each bundle's own network_def)."""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from MedDLLib import bundles, models
from MedDLLib.errors import ModelError
from MedDLLib.geometry import Geometry, Volume

ZOO = Path(__file__).resolve().parents[2] / "shared" / "reference" / "monai-bundles"
if not ZOO.is_dir():  # the checkout's sibling shared folder (/work/shared) or the repository's shared/
    ZOO = Path(__file__).resolve().parents[1] / "shared" / "reference" / "monai-bundles"
needs_zoo = pytest.mark.skipif(not ZOO.is_dir(), reason="shared/reference/monai-bundles not present")


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MEDDL_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def zoo_copy(name: str, tmp_path: Path, seed: int = 0) -> Path:
    """A copy of a zoo bundle with random weights built from its own network_def (as a user's download would be)."""
    folder = tmp_path / name
    shutil.copytree(ZOO / name, folder)
    plan = bundles.read_plan(folder)
    torch.manual_seed(seed)
    network = models.build_network({"network": plan.network})
    (folder / "models").mkdir(exist_ok=True)
    torch.save(network.state_dict(), folder / "models" / "model.pt")
    return folder


# ------------------------------------------------------------------------------------------------ MedDL as bundle
def _meddl_packages(tmp_path: Path) -> dict[str, Path]:
    from GliomaClassifierLib.model import untrained_package as glioma
    from ICHDetectorLib.model import untrained_package as ich
    from LGGSegmenterLib import model as lgg
    from LungSurvivalLib.model import untrained_package as lung

    spec = lgg.network_spec("unet", 3, width=4)
    meta = {"task": "lgg", "version": "1.0.0", "recipe": "improved", "network": spec,
            "input": {"channels": ["pre", "flair", "post"], "size": 32}, "output": {"labels": ["tumour"]},
            "postprocessing": {"threshold": 0.5}, "metrics": {},
            "training_data": {"kind": "synthetic", "n_studies": 0, "description": "random"}}
    return {"ich": ich(tmp_path / "ich", 32), "lung": lung(tmp_path / "lung"), "glioma": glioma(tmp_path / "glioma"),
            "lgg": models.save_package(tmp_path / "lgg" / "lgg-model", models.build_network(meta), meta)}


def test_meddl_packages_are_monai_bundles(tmp_path):
    from monai.bundle import ConfigParser, load, verify_net_in_out

    logging.disable(logging.WARNING)
    try:
        for task, package in _meddl_packages(tmp_path).items():
            meta = json.loads((package / models.METADATA_FILE).read_text())
            from MedDLLib.models.monai_spec import REQUIRED_KEYS

            assert [k for k in REQUIRED_KEYS if k not in meta] == [], task
            assert meta["task"] == task  # MedDL's key wins where both name it
            config = package / models.INFERENCE_FILE
            parser = ConfigParser()
            parser.read_config(str(config))
            built = parser.get_parsed_content("network_def")
            assert isinstance(built, torch.nn.Module)
            verify_net_in_out(net_id="network_def", meta_file=str(package / models.METADATA_FILE),
                              config_file=str(config), device="cpu")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                loaded = load(package.name, bundle_dir=str(package.parent), workflow_type="inference", device="cpu")
            assert isinstance(loaded, torch.nn.Module), task
            expected = models.load_package(package).network()
            for (k, a), (k2, b) in zip(expected.state_dict().items(), loaded.state_dict().items()):
                assert k == k2 and torch.equal(a, b.cpu()), (task, k)
    finally:
        logging.disable(logging.NOTSET)


def test_meddl_loader_never_reads_inference_config(tmp_path, home):
    """A hostile inference.json (a `_target_` and a `$` expression that would run code) changes nothing in MedDL."""
    package = _meddl_packages(tmp_path)["ich"]
    marker = tmp_path / "ran"
    hostile = {"network_def": {"_target_": "os.system", "command": f"touch {marker}"},
               "boom": f"$__import__('os').system('touch {marker}')"}
    (package / models.INFERENCE_FILE).write_text(json.dumps(hostile))
    assert models.load_package(package).network() is not None
    assert models.verify_model(package)["network"].endswith("built and loaded (strict)")
    models.import_model(package)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------ zoo bundles
@needs_zoo
@pytest.mark.parametrize("name, network, n_labels, axcodes", [
    ("spleen_ct_segmentation", "UNet", 2, "RAS"),
    ("wholeBody_ct_segmentation", "SegResNet", 105, "RAS"),
    ("brats_mri_segmentation", "SegResNet", 3, None),
])
def test_zoo_plans(name, network, n_labels, axcodes):
    plan = bundles.read_plan(ZOO / name)
    assert plan.network["name"] == f"monai.networks.nets.{network}" and len(plan.labels) == n_labels
    assert plan.axcodes == axcodes
    if name == "wholeBody_ct_segmentation":  # "$[1.5, ...] if @displayable_configs#highres else [3.0, ...]"
        assert plan.pixdim_mm == (1.5, 1.5, 1.5) and plan.labels[13] == "lung_upper_lobe_left"
        assert not plan.invert_before_discretize  # AsDiscreted before Invertd: labels go back nearest
    if name == "brats_mri_segmentation":
        assert plan.channels == ["T1c", "T1", "T2", "FLAIR"] and plan.discretize == {"threshold": 0.5}
        assert any("Lambdad" in note for note in plan.notes)


@needs_zoo
@pytest.mark.parametrize("edit, expected", [
    (lambda c: c["network_def"].update({"_target_": "os.system"}), "_target_ 'os.system' is not a MONAI network"),
    (lambda c: c["preprocessing"]["transforms"].append({"_target_": "RandFlipd", "keys": "image"}),
     "'RandFlipd' is not one of the preprocessing MedDL runs"),
    (lambda c: c["preprocessing"]["transforms"][3].update(pixdim="$__import__('os').getcwd()"),
     "is Python code; MedDL reads only literals"),
    (lambda c: c.update(inferer={"_target_": "SaliencyInferer", "cam_name": "GradCAM", "target_layers": "x"}),
     "inferer 'SaliencyInferer' is not one MedDL runs"),
    (lambda c: c["preprocessing"]["transforms"][3].update(diagonal=True),
     "argument 'diagonal' is not one MedDL supports"),
])
def test_bundle_needing_more_is_refused_with_what(edit, expected, tmp_path, home):
    folder = zoo_copy("spleen_ct_segmentation", tmp_path)
    config = json.loads((folder / bundles.INFERENCE_FILE).read_text())
    edit(config)
    (folder / bundles.INFERENCE_FILE).write_text(json.dumps(config))
    with pytest.raises(ModelError, match=expected):
        bundles.import_bundle(folder)
    assert not (home / "models").is_dir() or list((home / "models").iterdir()) == []


@needs_zoo
def test_bundle_without_weights_says_how_to_get_them(tmp_path, home):
    folder = tmp_path / "spleen_ct_segmentation"
    shutil.copytree(ZOO / "spleen_ct_segmentation", folder)
    with pytest.raises(ModelError, match="no weights at models/model.pt; fetch them with MONAI's tool"):
        bundles.import_bundle(folder)


@needs_zoo
def test_bundle_weights_of_another_network_are_refused(tmp_path, home):
    folder = zoo_copy("spleen_ct_segmentation", tmp_path)
    state = torch.load(folder / "models" / "model.pt", weights_only=True)
    first = next(iter(state))
    state[first] = torch.zeros(3)
    torch.save(state, folder / "models" / "model.pt")
    with pytest.raises(ModelError, match=f"first mismatching key '{first}'"):
        bundles.import_bundle(folder)


def _phantom(direction_lps, spacing=(1.6, 1.2, 2.5), shape_kji=(24, 36, 30), hu=True) -> tuple[Volume, np.ndarray]:
    """An asymmetric phantom: a bright block in the patient's left, anterior, superior octant."""
    geometry = Geometry(spacing, (-20.0, 15.0, -30.0), direction_lps)
    k, j, i = np.indices(shape_kji)
    lps = geometry.ijk_to_lps() @ np.stack([i.ravel(), j.ravel(), k.ravel(), np.ones(i.size)])
    x, y, z = (lps[a].reshape(shape_kji) for a in range(3))
    centre = geometry.ijk_to_lps() @ np.array([*(np.array(shape_kji[::-1]) - 1) / 2, 1.0])
    block = (x > centre[0] + 4) & (y < centre[1] - 3) & (z > centre[2] + 5)  # L = +x, A = -y, S = +z
    array = np.where(block, 200.0, -1000.0 if hu else 0.0).astype(np.float32)
    if not hu:
        array = np.where(block, 800.0, 100.0).astype(np.float32)
    return Volume(array, geometry), block


class _Probe(torch.nn.Module):
    """Records what it sees; channel 1 wins where the (scaled) input is bright."""

    def __init__(self, n_out: int, sigmoid: bool = False):
        super().__init__()
        self.n_out, self.sigmoid, self.seen = n_out, sigmoid, None

    def forward(self, x):
        self.seen = x.detach().clone() if self.seen is None else self.seen
        bright = (x[:, :1] > x[:, :1].mean()).float()
        if self.sigmoid:
            return torch.cat([bright * 8 - 4] * self.n_out, 1)
        out = torch.full((x.shape[0], self.n_out, *x.shape[2:]), -4.0)
        out[:, 1:2] = bright * 8 - 4
        return out


ORIENTATIONS = {
    "LPS": ((1, 0, 0), (0, 1, 0), (0, 0, 1)),
    "RAS-flipped": ((-1, 0, 0), (0, -1, 0), (0, 0, 1)),
    "permuted-feet-first": ((0, 1, 0), (1, 0, 0), (0, 0, -1)),  # columns: i -> P, j -> L, k -> I
}


@needs_zoo
@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_spleen_bundle_geometry(orientation, tmp_path, home, monkeypatch):
    """The network sees RAS ([i, j, k] = Right, Anterior, Superior) and the labelmap lands on the input's grid."""
    direction = tuple(zip(*ORIENTATIONS[orientation]))  # given as columns above
    name = bundles.import_bundle(zoo_copy("spleen_ct_segmentation", tmp_path)).name
    volume, block = _phantom(direction)
    probe = _Probe(2)
    monkeypatch.setattr(models.ModelPackage, "network", lambda self, device=None: probe)
    out = bundles.run_bundle(name, volume, roi_size=(32, 32, 32))
    assert out.labelmap.shape == volume.array.shape and out.geometry == volume.geometry
    truth = block.astype(bool)
    found = out.labelmap == 1
    dice = 2 * (found & truth).sum() / (found.sum() + truth.sum())
    assert dice > 0.85, dice
    seen = probe.seen[0, 0].numpy()  # [i, j, k] of the first window
    plan = bundles.read_plan(home / "models" / name)
    grid, size = bundles.plan_grid(volume.geometry, volume.array.shape[::-1], plan)
    assert np.allclose(grid.direction, np.diag([-1.0, -1.0, 1.0])) and np.allclose(grid.spacing_mm, (1.5, 1.5, 2.0))
    assert seen.max() > 0.9 and seen.min() < 0.1  # ScaleIntensityRanged -57..164 HU -> 0..1, clipped


@needs_zoo
def test_spleen_bundle_network_sees_ras(tmp_path, home, monkeypatch):
    """With one window covering the image: the block (patient's left, anterior, superior) sits at low i (R is +i),
    high j (A) and high k (S) in what the network sees, whatever the input's orientation."""
    name = bundles.import_bundle(zoo_copy("spleen_ct_segmentation", tmp_path)).name
    for orientation, columns in ORIENTATIONS.items():
        volume, _ = _phantom(tuple(zip(*columns)))
        probe = _Probe(2)
        monkeypatch.setattr(models.ModelPackage, "network", lambda self, device=None: probe)
        bundles.run_bundle(name, volume, roi_size=(96, 96, 96))
        seen = probe.seen[0, 0].numpy()
        i, j, k = (np.argwhere(seen > 0.5).mean(0) / np.array(seen.shape))
        # the sliding window pads symmetrically, so the centre of the padded array is the image centre
        assert i < 0.5 and j > 0.5 and k > 0.5, (orientation, i, j, k)


@needs_zoo
def test_spleen_bundle_runs_real_network_random_weights(tmp_path, home):
    name = bundles.import_bundle(zoo_copy("spleen_ct_segmentation", tmp_path)).name
    assert models.verify_model(name)["monai_bundle"]  # MedDL's own verification of the imported copy
    volume, _ = _phantom(ORIENTATIONS["permuted-feet-first"])
    out = bundles.run_bundle(name, volume, roi_size=(32, 32, 32))
    assert out.labelmap.shape == volume.array.shape and set(np.unique(out.labelmap)) <= {0, 1}
    assert out.labels == {0: "background", 1: "spleen"}


@needs_zoo
def test_cli_imports_a_zoo_bundle_without_format_and_lists_it(tmp_path, home, capsys):
    from MedDLLib.cli import main

    folder = zoo_copy("spleen_ct_segmentation", tmp_path)
    assert main(["models", "import", str(folder)]) == 0  # told apart from a MedDL package by its metadata
    assert main(["models", "verify", "spleen_ct_segmentation"]) == 0
    assert "MONAI bundle: yes" in capsys.readouterr().out
    assert main(["models", "list", "--json"]) == 0
    [entry] = json.loads(capsys.readouterr().out)
    assert entry["task"] == bundles.BUNDLE_TASK and entry["network"] == "monai.networks.nets.UNet"


@needs_zoo
def test_cli_runs_a_bundle_on_a_volume_file(tmp_path, home, capsys):
    from MedDLLib.cli import main
    import SimpleITK as sitk

    from MedDLLib.outputs import write_volume

    folder = zoo_copy("spleen_ct_segmentation", tmp_path)
    assert main(["models", "import", str(folder)]) == 0
    volume, _ = _phantom(ORIENTATIONS["permuted-feet-first"])
    ct = write_volume(tmp_path / "ct.nrrd", volume)
    out = tmp_path / "out"
    assert main(["models", "run", "spleen_ct_segmentation", "-i", str(ct), "-o", str(out),
                 "--roi-size", "32", "32", "32"]) == 0
    labels = sitk.ReadImage(str(out / "labels.nrrd"))
    assert labels.GetSize() == volume.array.shape[::-1]
    assert np.allclose(labels.GetDirection(), np.asarray(volume.geometry.direction).ravel())
    assert np.allclose(labels.GetOrigin(), volume.geometry.origin_lps_mm)
    result = json.loads((out / "bundle_result.json").read_text())
    assert result["labels"] == {"0": "background", "1": "spleen"} and "spleen" in result["volumes_ml"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    capsys.readouterr()
    assert main(["models", "run", "spleen_ct_segmentation", "-i", str(ct), "-o", str(tmp_path / "mine")]) == 1
    assert "is not an earlier `meddl models run` output" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
