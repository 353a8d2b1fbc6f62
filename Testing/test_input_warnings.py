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
