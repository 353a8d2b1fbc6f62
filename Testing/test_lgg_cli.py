"""`meddl infer|batch|phantom lgg` input validation: a CT is refused (DICOM modality or HU-like values, CLI and
node logic alike), every readable entry of a batch root is a study, impossible phantom arguments end in one line.

The model is the self-test's hand-set FLAIR threshold network (no training): these tests check what is refused
and what is run, not what a model learned.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LGGSegmenterLib import preprocess
from LGGSegmenterLib.selftests import _package
from MedDLLib import cli
from MedDLLib.dicomwrite import write_series
from MedDLLib.errors import InputError
from MedDLLib.geometry import Geometry, Volume


def _meddl(capsys, *args: object) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def flair_model(tmp_path_factory) -> Path:
    """A FLAIR-only LGG package (1x1 convolution: FLAIR above 127 is tumour)."""
    return _package(tmp_path_factory.mktemp("lgg_model"), in_channels=1)


def _head_ct_hu(shape: tuple[int, int, int] = (6, 40, 40)) -> np.ndarray:
    """A small head CT in HU: air -1000 around, a skull ring of 1000 HU, brain of 40 HU inside."""
    k, n, _ = shape
    jj, ii = np.mgrid[:n, :n]
    r = np.hypot(jj - n / 2, ii - n / 2)
    slice_ = np.where(r < 0.4 * n, 40.0, np.where(r < 0.45 * n, 1000.0, -1000.0))
    return np.repeat(slice_[None], k, axis=0).astype(np.float32)


def _mr(shape: tuple[int, int, int] = (6, 40, 40)) -> np.ndarray:
    """A small FLAIR-like MR: 0 around, 60 in the head, a bright 200 'tumour'."""
    k, n, _ = shape
    jj, ii = np.mgrid[:n, :n]
    slice_ = np.where(np.hypot(jj - n / 2, ii - n / 2) < 0.4 * n, 60.0, 0.0)
    array = np.repeat(slice_[None], k, axis=0).astype(np.float32)
    array[2:4, 15:22, 15:22] = 200.0
    return array


GEOMETRY = Geometry((1.0, 1.0, 3.0), (0.0, 0.0, 0.0), np.eye(3))


def test_infer_refuses_a_ct_dicom_series(tmp_path, capsys, flair_model):
    write_series(tmp_path / "ct", Volume(_head_ct_hu(), GEOMETRY, {}), modality="CT")
    code, _, err = _meddl(capsys, "infer", "lgg", "--input", tmp_path / "ct", "--model", flair_model,
                          "--output", tmp_path / "o")
    assert code == 1, err
    assert "meddl infer: error:" in err and "modality 'CT'" in err and str(tmp_path / "ct") in err, err
    assert "Traceback" not in err and not (tmp_path / "o" / "result.json").exists()


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz"])
def test_infer_refuses_a_headerless_volume_in_hu_and_runs_an_mr_one(tmp_path, capsys, flair_model, suffix):
    ct = tmp_path / f"ct{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(_head_ct_hu().astype(np.int16)), str(ct))
    code, _, err = _meddl(capsys, "infer", "lgg", "--input", ct, "--model", flair_model, "--output", tmp_path / "o")
    assert code == 1, err
    assert "like air in a CT in Hounsfield units" in err and str(ct) in err, err
    assert not (tmp_path / "o" / "result.json").exists()
    mr = tmp_path / f"flair{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(_mr().astype(np.uint16)), str(mr))
    code, _, err = _meddl(capsys, "infer", "lgg", "--input", mr, "--model", flair_model, "--output", tmp_path / "m")
    assert code == 0, err
    assert json.loads((tmp_path / "m" / "result.json").read_text())["tumour_volume_ml"] > 0


def test_node_logic_refuses_ct_nodes_too(headless_scene, tmp_path, flair_model):
    """The Slicer path (nodes in a scene) goes through the same check as the command line."""
    from LGGSegmenterLib.logic import LGGSegmenterLogic
    from MedDLLib import nodes

    tagged = nodes.add_scalar_volume(headless_scene, Volume(_mr(), GEOMETRY, {"modality": "CT"}), "tagged CT")
    with pytest.raises(InputError, match="volume 'tagged CT': modality 'CT'"):
        LGGSegmenterLogic().process(tagged, flair_model)
    hu = nodes.add_scalar_volume(headless_scene, Volume(_head_ct_hu(), GEOMETRY, {}), "untagged")
    with pytest.raises(InputError, match="volume 'untagged': .* like air in a CT"):
        LGGSegmenterLogic().process(hu, flair_model)


def test_mr_values_pass_the_ct_value_test():
    """kaggle_3m .tif (uint8), MR magnitude, z-scored MR (a few negative values) and a DICOM MR pass."""
    preprocess.check_mri(Volume(_mr().astype(np.uint8), GEOMETRY, {}), "tif")
    zscored = (_mr() - _mr().mean()) / _mr().std()
    preprocess.check_mri(Volume(zscored.astype(np.float32), GEOMETRY, {}), "z-scored")
    preprocess.check_mri(Volume(_head_ct_hu(), GEOMETRY, {"modality": "MR"}), "header says MR")
    assert preprocess.ct_air_fraction(_head_ct_hu()) > 0.3 and preprocess.ct_air_fraction(zscored) == 0.0


def test_batch_takes_every_readable_entry_as_a_study(tmp_path, capsys, flair_model):
    """kaggle_3m folders, a DICOM folder and a volume file are all studies; data.csv and hidden entries are not."""
    root = tmp_path / "root"
    assert cli.main(["phantom", "lgg", str(tmp_path / "ph"), "--cases", "1", "--size", "32", "--slices", "6",
                     "--no-dicom"]) == 0
    shutil.copytree(tmp_path / "ph" / "kaggle_3m", root)
    write_series(root / "dicom_case", Volume(_mr(), GEOMETRY, {}), modality="MR", rescale_slope=None,
                 rescale_intercept=None)
    sitk.WriteImage(sitk.GetImageFromArray(_mr().astype(np.uint16)), str(root / "flair_case.nrrd"))
    (root / ".hidden").mkdir()
    capsys.readouterr()
    code, out, err = _meddl(capsys, "batch", "lgg", "--input", root, "--model", flair_model, "--output",
                            tmp_path / "out")
    assert code == 0, err
    rows = {r["study"]: r["status"] for r in csv.DictReader((tmp_path / "out" / "summary.csv").open())}
    assert rows == {"TCGA_PH_0000_19950101": "ok", "dicom_case": "ok", "flair_case": "ok"}, rows
    assert "3 studies: 3 done" in out


def test_phantom_argument_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    code, _, err = _meddl(capsys, "phantom", "lgg", tmp_path / "small", "--cases", "1", "--size", "16",
                          "--slices", "4")
    assert code == 1 and "LGG phantoms need size >= 32 pixels and >= 6 slices" in err, err
    assert "Traceback" not in err and not (tmp_path / "small").exists()
    for option, value in (("--size", "0"), ("--slices", "-1"), ("--cases", "0")):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["phantom", "lgg", str(tmp_path / "zero"), option, value])
        assert exit_info.value.code == 2
        assert "expected an integer >= 1" in capsys.readouterr().err
    assert not (tmp_path / "zero").exists()
