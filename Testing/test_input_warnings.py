"""What reading a study warned about reaches ``result.json`` (``warnings``) for ``meddl infer`` and ``meddl batch``:
here a head CT series with one slice whose ImagePositionPatient lies a kilometre off (set aside by the reader)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fuzz_inputs import _outlier, dicom_files


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict[str, Path]:
    from ICHDetectorLib import phantom
    from ICHDetectorLib.model import untrained_package
    from MedDLLib.dicomwrite import write_series

    root = tmp_path_factory.mktemp("warned")
    volume, _, _ = phantom.head_ct(np.random.default_rng(5), 32, 8, ())
    series = root / "studies" / "head"
    write_series(series, volume.with_array(volume.array.astype(np.int16)), rescale_intercept=0.0,
                 file_names="instance")
    files = dicom_files(series)
    _outlier("1000000")(files)  # the last file's z: 1 km from the scanner's origin
    return {"studies": root / "studies", "series": series, "outlier": files[-1],
            "model": untrained_package(root / "model", 32)}


def _warnings(result: Path) -> list[str]:
    return json.loads(result.read_text(encoding="utf-8")).get("warnings", [])


def test_infer_result_json_names_the_slice_set_aside(study, tmp_path):
    from MedDLLib.cli import main

    assert main(["infer", "ich", "--input", str(study["series"]), "--model", str(study["model"]),
                 "--output", str(tmp_path / "out")]) == 0
    warnings = _warnings(tmp_path / "out" / "result.json")
    assert any(study["outlier"].name in w and "set aside" in w for w in warnings), warnings


def test_batch_result_json_names_the_slice_set_aside(study, tmp_path):
    from MedDLLib.cli import main

    assert main(["batch", "ich", "--input", str(study["studies"]), "--model", str(study["model"]),
                 "--output", str(tmp_path / "out")]) == 0
    (result,) = (tmp_path / "out").rglob("result.json")
    warnings = _warnings(result)
    assert any(study["outlier"].name in w and "set aside" in w for w in warnings), warnings


def test_task_warnings_and_input_warnings_merge_once():
    from MedDLLib.geometry import Geometry, Volume
    from MedDLLib.pipeline import Study, input_warnings, merged_warnings

    def volume(*warnings: str) -> Volume:
        return Volume(np.zeros((2, 2, 2), np.float32), Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0),
                                                                ((1, 0, 0), (0, 1, 0), (0, 0, 1))),
                      {"warnings": list(warnings)})

    study = Study({"T1": volume("tilt resampled"), "FLAIR": volume("outlier set aside")}, "FLAIR")
    assert input_warnings(study) == ["FLAIR: outlier set aside", "T1: tilt resampled"]
    assert merged_warnings(["VOI LUT not applied", "FLAIR: outlier set aside"], input_warnings(study)) == [
        "VOI LUT not applied", "FLAIR: outlier set aside", "T1: tilt resampled"]
    assert input_warnings(Study({"image": volume()}, "image")) == []



def test_a_dicom_source_the_seg_writer_refuses_is_a_warning_not_a_failure(study, tmp_path):
    """``--dicom-source`` (what the widget adds for a node from Slicer's DICOM module) naming a series a DICOM SEG
    cannot reference (here: no FrameOfReferenceUID): the outputs are written, no DICOM SEG, result.json says why."""
    import shutil

    import SimpleITK as sitk

    from fuzz_inputs import delete, edit
    from ICHDetectorLib import phantom
    from MedDLLib.cli import main
    from MedDLLib.resample import to_sitk

    volume, _, _ = phantom.head_ct(np.random.default_rng(5), 32, 8, ())
    sitk.WriteImage(to_sitk(volume.with_array(volume.array.astype(np.int16))), str(tmp_path / "head.nrrd"))
    source = Path(shutil.copytree(study["series"], tmp_path / "source"))
    edit(dicom_files(source), delete("FrameOfReferenceUID"))
    assert main(["infer", "ich", "--input", str(tmp_path / "head.nrrd"), "--model", str(study["model"]),
                 "--output", str(tmp_path / "out"), "--dicom-source", str(source)]) == 0
    result = json.loads((tmp_path / "out" / "result.json").read_text(encoding="utf-8"))
    assert "dicom_seg" not in result and (tmp_path / "out" / "suspected.seg.nrrd").is_file()
    assert any(w.startswith("suspected.seg.nrrd: no DICOM SEG written") and "FrameOfReferenceUID" in w
               for w in result["warnings"]), result
