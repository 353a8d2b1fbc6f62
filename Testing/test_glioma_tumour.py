"""GliomaClassifierLib.tumour: brats_mri_segmentation's tumour regions and the classifier window's centre."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from MedDLLib import bundles, models
from MedDLLib.geometry import Geometry, Volume
from test_bundles import needs_zoo, zoo_copy

from GliomaClassifierLib import tumour


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDDL_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _brain(geometry: Geometry, shape=(24, 28, 28), value=300.0) -> tuple[Volume, np.ndarray]:
    k, j, i = np.indices(shape)
    head = ((k - 12) / 11) ** 2 + ((j - 14) / 13) ** 2 + ((i - 14) / 13) ** 2 < 1
    lesion = (k >= 14) & (k < 20) & (j >= 6) & (j < 12) & (i >= 16) & (i < 22)
    array = np.where(head, 100.0, 0.0) + np.where(lesion, value, 0.0)
    return Volume(array.astype(np.float32), geometry), lesion


class _BrightProbe(torch.nn.Module):
    def forward(self, x):
        bright = (x[:, :1] > 1.0).float()  # z-scored inside the head: the lesion is > 1 sd above
        return torch.cat([bright * 8 - 4] * 3, 1)


@needs_zoo
def test_tumour_regions_and_window_centre(tmp_path, home, monkeypatch):
    name = bundles.import_bundle(zoo_copy("brats_mri_segmentation", tmp_path)).name
    monkeypatch.setattr(models.ModelPackage, "network", lambda self, device=None: _BrightProbe())
    grid = Geometry((1.0, 1.0, 1.0), (-14.0, -14.0, -12.0))
    volumes = {}
    for rsna in tumour.SEQUENCES.values():
        volumes[rsna], lesion = _brain(grid)
    # T2w on another grid (2 mm slices): resampled onto the T1wCE grid in patient space
    from MedDLLib.resample import resample

    volumes["T2w"] = resample(volumes["T2w"], spacing_mm=(1.0, 1.0, 2.0))
    regions = tumour.segment_tumour(volumes, name, roi_size=(32, 32, 32))
    whole = regions.masks["whole tumour"].astype(bool)
    dice = 2 * (whole & lesion).sum() / (whole.sum() + lesion.sum())
    assert dice > 0.9 and regions.volumes_ml["whole tumour"] == pytest.approx(whole.sum() / 1000)
    assert any("Lambdad" in n for n in regions.notes)
    assert regions.labelmap().max() == 3
    # the classifier's stack: the same grid -> the lesion's centre slice (k 14..19 -> 16.5)
    assert tumour.window_centre_slice(regions, grid, 24) in (16, 17)


@needs_zoo
def test_brats_segresnet_random_weights_whole_path(tmp_path, home):
    name = bundles.import_bundle(zoo_copy("brats_mri_segmentation", tmp_path)).name
    grid = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), ((0, 1, 0), (1, 0, 0), (0, 0, -1)))
    volumes = {rsna: _brain(grid, shape=(16, 24, 24))[0] for rsna in tumour.SEQUENCES.values()}
    regions = tumour.segment_tumour(volumes, name, roi_size=(16, 24, 24))
    assert set(regions.masks) == {"tumour core", "whole tumour", "enhancing tumour"}
    assert all(m.shape == (16, 24, 24) for m in regions.masks.values()) and regions.geometry == grid


def test_tumour_needs_all_four_sequences():
    from MedDLLib.errors import InputError

    with pytest.raises(InputError, match="missing T2w, FLAIR"):
        tumour.bundle_inputs({"T1wCE": _brain(Geometry())[0], "T1w": _brain(Geometry())[0]})


# ------------------------------------------------------------------------------------------------ meddl infer glioma
def _small_window_bundle(tmp_path, name="brats-test"):
    """The BraTS bundle with random weights from its network_def and a 32^3 window (a small machine's override)."""
    import json

    folder = zoo_copy("brats_mri_segmentation", tmp_path)
    config_file = folder / "configs" / "inference.json"
    config = json.loads(config_file.read_text())
    config["inferer"]["roi_size"] = [32, 32, 32]
    config_file.write_text(json.dumps(config))
    return bundles.import_bundle(folder, name=name).name


def _case_folder(tmp_path, geometry: Geometry, shape=(24, 28, 28)):
    """A case folder ``<sequence>/`` of four MR DICOM series of :func:`_brain` (the lesion bright in each)."""
    from MedDLLib.dicomwrite import write_series

    case = tmp_path / "case"
    study_uid = "1.2.826.0.1.3680043.8.498.1"
    frame = "1.2.826.0.1.3680043.8.498.2"
    for number, rsna in enumerate(tumour.SEQUENCES.values(), start=1):
        volume, lesion = _brain(geometry, shape)
        write_series(case / rsna, volume, modality="MR", rescale_intercept=0.0, study_uid=study_uid,
                     frame_of_reference_uid=frame, series_number=number, series_description=rsna)
    return case, volume, lesion


def _infer_glioma(tmp_path, case, tumour_model, sequences=("T1wCE",)):
    import json

    from MedDLLib import cli
    from GliomaClassifierLib.model import untrained_package

    model = untrained_package(tmp_path / "glioma-model" / "m", sequences=sequences, size=24, depth=8)
    out = tmp_path / "out"
    code = cli.main(["infer", "glioma", "--input", str(case), "--model", str(model), "--output", str(out),
                     "--tumour-model", tumour_model])
    assert code == 0
    return out, json.loads((out / "result.json").read_text())


@needs_zoo
def test_infer_glioma_tumour_model_segmentation_and_window(tmp_path, home, monkeypatch):
    """``meddl infer glioma --tumour-model``: the regions as tumour.seg.nrrd (innermost region per voxel) and a DICOM
    SEG of the three whole, overlapping regions, on the reference sequence's grid; the window centred on the
    tumour (k 14..19 -> slice 16/17, not the brain's middle 12)."""
    from MedDLLib.dicomseg import read_dicom_seg
    from MedDLLib.outputs import read_segmentation_labels

    name = _small_window_bundle(tmp_path)
    real_network = models.ModelPackage.network
    monkeypatch.setattr(models.ModelPackage, "network", lambda self, device=None: (
        _BrightProbe() if self.task == bundles.BUNDLE_TASK else real_network(self, device)))
    grid = Geometry((1.0, 1.0, 1.0), (-14.0, -14.0, -12.0))
    case, t1wce, lesion = _case_folder(tmp_path, grid)
    out, result = _infer_glioma(tmp_path, case, name)
    assert result["window_centred_on"] == "segmented tumour"
    assert result["window_centre_slice"] in (16, 17)
    assert result["tumour_volumes_ml"]["whole tumour"] == pytest.approx(lesion.sum() / 1000, rel=0.15)
    labels, segments = read_segmentation_labels(out / result["tumour"])
    assert [n for n, _ in segments.values()] == ["whole tumour", "tumour core", "enhancing tumour"]
    assert labels.array.shape == t1wce.array.shape and labels.geometry.allclose(t1wce.geometry, 1e-3)
    found = labels.array > 0
    assert 2 * (found & lesion).sum() / (found.sum() + lesion.sum()) > 0.85
    # the DICOM SEG: three stacked, overlapping regions, each whole (not the whole tumour's outer shell)
    stacked, described = read_dicom_seg(out / result["dicom_seg"], t1wce.geometry, t1wce.array.shape,
                                        stacked=True)
    assert stacked.shape == (*t1wce.array.shape, 3)
    assert [d["label"] for _, d in sorted(described.items())] == ["whole tumour", "tumour core", "enhancing tumour"]
    assert (stacked[..., 0] == found).all() and (stacked[..., 1] == found).all() and (stacked[..., 2] == found).all()
    assert "52988006" in described[1]["type"] and "108369006" in described[2]["type"]


@needs_zoo
def test_infer_glioma_tumour_model_real_segresnet(tmp_path, home):
    """The bundle's own SegResNet (random weights) through ``meddl infer glioma --tumour-model`` with a FLAIR-first
    classifier: the regions resampled onto the FLAIR grid (another orientation), a region never outside its
    enclosing one in the .seg.nrrd, result.json naming what the window was centred on."""
    from MedDLLib.outputs import read_segmentation_labels
    from MedDLLib.io import read_volume_file

    name = _small_window_bundle(tmp_path)
    grid = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), ((0, 1, 0), (1, 0, 0), (0, 0, -1)))
    case, t1wce, _ = _case_folder(tmp_path, grid, shape=(16, 20, 20))
    out, result = _infer_glioma(tmp_path, case, name, sequences=("FLAIR", "T1wCE"))
    labels, _ = read_segmentation_labels(out / result["tumour"])
    heat = read_volume_file(out / result["heatmap"])
    assert labels.array.shape == heat.array.shape == (16, 20, 20)
    assert labels.geometry.allclose(heat.geometry, 1e-3) and labels.geometry.allclose(grid, 1e-3)
    assert result["window_centred_on"] in ("segmented tumour", "brain")
    assert set(result["tumour_volumes_ml"]) == {"whole tumour", "tumour core", "enhancing tumour"}


def test_infer_glioma_tumour_model_needs_four_sequences(tmp_path, home, capsys):
    from MedDLLib import cli
    from MedDLLib.dicomwrite import write_series
    from GliomaClassifierLib.model import untrained_package

    model = untrained_package(tmp_path / "m" / "m", size=24, depth=8)
    write_series(tmp_path / "case" / "T1wCE", _brain(Geometry())[0], modality="MR", rescale_intercept=0.0)
    code = cli.main(["infer", "glioma", "--input", str(tmp_path / "case"), "--model", str(model), "--output",
                     str(tmp_path / "out"), "--tumour-model", "any"])
    err = capsys.readouterr().err
    assert code != 0 and "T1w" in err and "Traceback" not in err
