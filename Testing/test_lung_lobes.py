"""LungSurvivalLib.lobes: wholeBody_ct_segmentation's lungs and five lobes as LungSurvival's lung segmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from MedDLLib import bundles, models
from MedDLLib.geometry import Geometry, Volume
from test_bundles import needs_zoo, zoo_copy

from LungSurvivalLib import lobes
from LungSurvivalLib.preprocess import LEFT_LUNG, RIGHT_LUNG


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDDL_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _chest(direction=((1, 0, 0), (0, 1, 0), (0, 0, 1)), shape=(16, 24, 24), spacing=(3.0, 3.0, 3.0)) -> Volume:
    """A crude chest: body of soft tissue with two air-filled lungs."""
    array = np.full(shape, -1000.0, dtype=np.float32)
    array[:, 3:-3, 3:-3] = 40.0
    array[3:-3, 7:-7, 5:11] = -850.0
    array[3:-3, 7:-7, 13:19] = -850.0
    return Volume(array, Geometry(spacing, (-30.0, -40.0, -20.0), direction))


def test_lobes_from_labels_volumes_in_ml():
    ct = _chest()
    masks = {name: np.zeros(ct.array.shape, np.uint8) for name, _, _ in lobes.LOBES.values()}
    masks["lung_upper_lobe_right"][2:5, 8:12, 5:11] = 1   # 3*4*6 = 72 voxels of 27 mm^3
    masks["lung_lower_lobe_left"][5:9, 8:12, 13:19] = 1   # 96 voxels
    result = lobes.lobes_from_labels(ct, lambda n: masks.get(n, np.zeros(ct.array.shape, np.uint8)))
    assert result.lobe_ml["Right upper lobe"] == pytest.approx(72 * 0.027)
    assert result.lobe_ml["Left lower lobe"] == pytest.approx(96 * 0.027)
    assert result.lungs.right_ml == pytest.approx(72 * 0.027) and result.lungs.left_ml == pytest.approx(96 * 0.027)
    assert set(np.unique(result.lungs.labels)) == {0, RIGHT_LUNG, LEFT_LUNG}
    row = result.volumes_row()
    assert list(row)[:2] == ["Right lung mL", "Left lung mL"] and "Right middle lobe mL" in row


class _SideProbe(torch.nn.Module):
    """wholeBody stand-in: right upper lobe (class 15) at high i of the RAS array it sees, left upper lobe (13) at
    low i, inside the lungs (air)."""

    def forward(self, x):
        out = torch.full((x.shape[0], 105, *x.shape[2:]), -5.0)
        air = x[:, 0] < x[:, 0].mean() - 0.5 * x[:, 0].std()
        i = torch.arange(x.shape[2]).view(1, -1, 1, 1).expand_as(air)
        centre = (x.shape[2] - 1) / 2
        out[:, 15] = torch.where(air & (i > centre), 5.0, -5.0)
        out[:, 13] = torch.where(air & (i <= centre), 5.0, -5.0)
        return out


@needs_zoo
@pytest.mark.parametrize("direction", [((1, 0, 0), (0, 1, 0), (0, 0, 1)), ((-1, 0, 0), (0, 1, 0), (0, 0, -1))])
def test_lobes_left_is_the_patients_left(direction, tmp_path, home, monkeypatch):
    name = bundles.import_bundle(zoo_copy("wholeBody_ct_segmentation", tmp_path)).name
    monkeypatch.setattr(models.ModelPackage, "network", lambda self, device=None: _SideProbe())
    ct = _chest(direction)
    result = lobes.segment_lobes(ct, name, roi_size=(64, 64, 64))
    labels = result.lungs.labels
    assert result.lungs.left_ml > 5 and result.lungs.right_ml > 5
    # LPS x of every labelled voxel: left lung at larger x (L = +x) than right lung
    k, j, i = np.nonzero(labels)
    x = (ct.geometry.ijk_to_lps() @ np.stack([i, j, k, np.ones_like(i)]))[0]
    assert x[labels[k, j, i] == LEFT_LUNG].min() > x[labels[k, j, i] == RIGHT_LUNG].max()


@needs_zoo
def test_wholebody_segresnet_random_weights_whole_path(tmp_path, home):
    name = bundles.import_bundle(zoo_copy("wholeBody_ct_segmentation", tmp_path)).name
    ct = _chest(((0, 1, 0), (1, 0, 0), (0, 0, -1)), shape=(12, 16, 16))
    result = lobes.segment_lobes(ct, name, roi_size=(32, 32, 32))
    assert result.lobes.shape == ct.array.shape and result.lungs.labels.shape == ct.array.shape
    total = sum(result.lobe_ml.values())
    assert total == pytest.approx(result.lungs.left_ml + result.lungs.right_ml)


# ------------------------------------------------------------------------------------------------ meddl infer lung
def _lowres_bundle(tmp_path, final_bias_class: int | None = None):
    """The wholeBody bundle at its low resolution (3 mm, ``model_lowres.pt``: the config's own switch) with random
    weights from its network_def, a 64^3 window (a small machine's override). ``final_bias_class``: the last
    layer's bias made to favour that class, so the random network still labels some voxels a lobe."""
    import json

    folder = zoo_copy("wholeBody_ct_segmentation", tmp_path)
    config_file = folder / "configs" / "inference.json"
    config = json.loads(config_file.read_text())
    config["displayable_configs"]["highres"] = False
    config["inferer"]["roi_size"] = [64, 64, 64]
    config_file.write_text(json.dumps(config))
    state = torch.load(folder / "models" / "model.pt", weights_only=True)
    if final_bias_class is not None:
        bias = [k for k in state if k.startswith("conv_final") and k.endswith("bias")][-1]
        weight = bias[: -len("bias")] + "weight"
        state[weight] = state[weight] * 0.0
        state[bias] = torch.full_like(state[bias], -10.0)
        state[bias][final_bias_class] = 10.0
    torch.save(state, folder / "models" / "model_lowres.pt")
    (folder / "models" / "model.pt").unlink()
    return bundles.import_bundle(folder, name="wholebody-test").name


def _chest_dicom(tmp_path, direction=((1, 0, 0), (0, 1, 0), (0, 0, 1))):
    """A 96 x 144 x 144 mm chest (6 mm voxels, ~260 mL of lungs) as a DICOM CT series."""
    from MedDLLib.dicomwrite import write_series

    ct = _chest(direction, spacing=(6.0, 6.0, 6.0))
    folder = tmp_path / "ct"
    write_series(folder, ct, modality="CT")
    return ct, folder


def _infer(tmp_path, ct_folder, lobe_model, out_name="out"):
    import json

    from MedDLLib import cli
    from LungSurvivalLib.model import untrained_package

    model = untrained_package(tmp_path / "lung-model")
    out = tmp_path / out_name
    code = cli.main(["infer", "lung", "--input", str(ct_folder), "--model", str(model), "--output", str(out),
                     "--lobe-model", lobe_model])
    assert code == 0
    return out, json.loads((out / "result.json").read_text())


@needs_zoo
@pytest.mark.parametrize("direction", [((1, 0, 0), (0, 1, 0), (0, 0, 1)), ((-1, 0, 0), (0, 1, 0), (0, 0, -1))])
def test_infer_lung_lobe_model_outputs_on_the_input_grid(direction, tmp_path, home, monkeypatch):
    """``meddl infer lung --lobe-model``: the lobes (the side probe: right upper / left upper lobe in the air of
    each side) as lobes.seg.nrrd and DICOM SEG on the CT's grid, their mL in result.json and the volumes table,
    the lungs of the pipeline the bundle's."""
    import csv

    from MedDLLib.dicomseg import read_dicom_seg
    from MedDLLib.outputs import read_segmentation_labels

    name = _lowres_bundle(tmp_path)
    real_network = models.ModelPackage.network
    monkeypatch.setattr(models.ModelPackage, "network", lambda self, device=None: (
        _SideProbe() if self.task == bundles.BUNDLE_TASK else real_network(self, device)))
    ct, folder = _chest_dicom(tmp_path, direction)
    out, result = _infer(tmp_path, folder, name)
    assert {"lobes", "segmentation", "labelmap", "heatmap", "volumes"} <= set(result)
    lobe_ml = result["lobe_volumes_ml"]
    names = [n for _, n, _ in lobes.LOBES.values()]
    assert sorted(lobe_ml) == sorted(names)
    assert lobe_ml["Right upper lobe"] > 50 and lobe_ml["Left upper lobe"] > 50 and lobe_ml["Right lower lobe"] == 0
    assert result["right_lung_ml"] == pytest.approx(lobe_ml["Right upper lobe"], abs=1e-2)
    assert result["left_lung_ml"] == pytest.approx(lobe_ml["Left upper lobe"], abs=1e-2)
    # lobes.seg.nrrd on the CT's grid; the left upper lobe at the patient's left (+x in LPS)
    labels, segments = read_segmentation_labels(out / result["lobes"])
    assert labels.array.shape == ct.array.shape and labels.geometry.allclose(ct.geometry, 1e-3)
    assert [n for n, _ in segments.values()] == [n for _, n, _ in lobes.LOBES.values()]
    k, j, i = np.nonzero(labels.array)
    x = (ct.geometry.ijk_to_lps() @ np.stack([i, j, k, np.ones_like(i)]))[0]
    assert x[labels.array[k, j, i] == 4].min() > x[labels.array[k, j, i] == 1].max()
    assert (labels.array == 4).sum() * 0.216 == pytest.approx(lobe_ml["Left upper lobe"], abs=1e-2)
    # the DICOM SEG of the lobes references the CT series and holds the same voxels
    seg, described = read_dicom_seg(out / result["lobes_dicom_seg"], ct.geometry, ct.array.shape)
    assert (seg > 0).sum() == (labels.array > 0).sum()
    assert {d["label"] for d in described.values()} >= {"Right upper lobe", "Left upper lobe"}
    assert any("45653009" in d["type"] for d in described.values())
    # the volumes table: left/right, then the five lobes, then both lungs
    with open(out / result["volumes"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["lung"] for r in rows] == ["Right lung", "Left lung", *names, "Both lungs"]
    assert float(rows[5]["volume_ml"]) == pytest.approx(lobe_ml["Left upper lobe"], abs=1e-2)


@needs_zoo
def test_infer_lung_lobe_model_real_segresnet(tmp_path, home):
    """The bundle's own SegResNet (random weights; its last bias favouring the right upper lobe) through
    ``meddl infer lung --lobe-model``: every output on the input grid, the lungs all right upper lobe."""
    from MedDLLib.io import read_volume_file

    name = _lowres_bundle(tmp_path, final_bias_class=15)  # TotalSegmentator class 15: lung_upper_lobe_right
    assert bundles.read_plan(models.resolve_model(name)).labels[15] == "lung_upper_lobe_right"
    ct, folder = _chest_dicom(tmp_path, ((0, 1, 0), (1, 0, 0), (0, 0, -1)))
    out, result = _infer(tmp_path, folder, name)
    lobe_ml = result["lobe_volumes_ml"]
    assert lobe_ml["Right upper lobe"] == pytest.approx(result["total_lung_ml"]) and result["left_lung_ml"] == 0
    for key in ("lobes", "labelmap", "heatmap"):
        volume = read_volume_file(out / result[key])
        assert volume.array.shape == ct.array.shape and volume.geometry.allclose(ct.geometry, 1e-3), key


def test_infer_lung_lobe_model_refuses_another_bundle(tmp_path, home):
    from MedDLLib import cli

    code = cli.main(["infer", "lung", "--input", str(tmp_path / "none"), "--model", "nothing", "--output",
                     str(tmp_path / "o"), "--lobe-model", "not-imported"])
    assert code != 0


@needs_zoo
def test_widgets_offer_the_bundles_of_the_right_kind(tmp_path, home):
    """The lobe / tumour model selectors (MedDLWidgets.modelselector.BundleSelector) list the imported bundles whose
    outputs fit, whatever their names; the child command carries the choice as the option the parser reads."""
    import argparse

    from MedDLLib import guisupport
    from MedDLLib.models import list_models
    from LungSurvivalLib import options, widgetlogic
    from LungSurvivalLib.cli import TASK
    from GliomaClassifierLib import options as glioma_options

    bundles.import_bundle(zoo_copy("wholeBody_ct_segmentation", tmp_path), name="my-lobes")
    bundles.import_bundle(zoo_copy("brats_mri_segmentation", tmp_path), name="my-tumours")
    lobe = guisupport.bundle_choices(list_models(), options.LOBE_CLASSES, keep="gone")
    tumour = guisupport.bundle_choices(list_models(), glioma_options.TUMOUR_MODEL_OUTPUTS)
    assert [c.name for c in lobe] == ["my-lobes", "gone"] and lobe[1].problem == guisupport.MISSING_MODEL
    assert [c.name for c in tumour] == ["my-tumours"]
    arguments = widgetlogic.infer_arguments(tmp_path / "ct.nrrd", "m", tmp_path / "o", lobe_model="my-lobes")
    parser = argparse.ArgumentParser()
    TASK.add_arguments("infer", parser)
    known, _ = parser.parse_known_args(arguments[2:])
    assert known.lobe_model == "my-lobes"
