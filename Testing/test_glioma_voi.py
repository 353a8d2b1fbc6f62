"""The VOI LUT reaches the glioma model whatever the input's route: a node loaded through Slicer's DICOM module
(found by its ``DICOM.instanceUIDs``) or a NRRD written by the widget with ``--voi-dicom`` gives the same network
input and probability as reading the DICOM series; an input without a known header is named in a warning.

The series is written with a window that clips the scalp fat (centre 600, width 1000), so the VOI changes what
the per-slice min-max normalisation sees: without it the network input differs.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pydicom
import pytest

from GliomaClassifierLib import cli, logic, model, phantom, preprocess, widgetlogic
from MedDLLib import dicom, io, nodes
from MedDLLib.dicomwrite import write_series
from MedDLLib.errors import InputError
from MedDLLib.geometry import Volume


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """A clipped-window T1wCE series, its DICOM read, and ``{SOPInstanceUID: file}``."""
    folder = tmp_path_factory.mktemp("voi") / "T1wCE"
    volumes, _, _ = phantom.brain_mri(np.random.default_rng(3), 32, 12, label=1)
    write_series(folder, volumes["T1wCE"], modality="MR", rescale_slope=None, rescale_intercept=None,
                 window=(600.0, 1000.0), series_description="T1wCE")
    files = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: str(p) for p in folder.iterdir()}
    return folder, dicom.read_dicom_folder(folder), files


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return model.untrained_package(tmp_path_factory.mktemp("voi_model") / "m", size=32, depth=12)


def _node(scene, volume, from_dicom=True):
    """A node as Slicer's DICOM module leaves it (``DICOM.instanceUIDs`` set by ``add_scalar_volume`` from the
    read's metadata), or one of other origin (no DICOM attributes)."""
    if not from_dicom:
        volume = Volume(volume.array, volume.geometry, {"modality": "MR"})
    return nodes.add_scalar_volume(scene, volume, "T1wCE")


def test_voi_changes_the_network_input(series):
    _, read, _ = series
    spec = preprocess.InputSpec(size=32, depth=12)
    with_voi = preprocess.prepare({"T1wCE": read}, spec).array
    plain = read.with_array(read.array)
    plain.metadata.pop("files", None)
    without = preprocess.prepare({"T1wCE": plain}, spec).array
    assert preprocess.voi_source(read) is not None and preprocess.voi_source(plain) is None
    assert np.abs(with_voi - without).max() > 0.05  # the window clips the fat: a different min-max reference


def test_node_from_slicer_dicom_gets_the_series_voi(series, package, headless_scene):
    _, read, files = series
    direct = logic.compute({"T1wCE": read}, package)
    node = _node(headless_scene, read)
    assert node.GetAttribute("DICOM.instanceUIDs").split()[0] in files
    before = nodes.volume_from_node(node).array.copy()
    found = logic.GliomaClassifierLogic().process({"T1wCE": node}, package, file_for_instance=files.get)
    assert found.probability == pytest.approx(direct.probability, abs=1e-6)
    assert not [w for w in found.warnings if "VOI" in w]
    np.testing.assert_array_equal(nodes.volume_from_node(node).array, before)  # input node untouched

    lost = logic.GliomaClassifierLogic().process({"T1wCE": _node(headless_scene, read, False)}, package,
                                                 file_for_instance=files.get)
    assert any("VOI LUT not applied to T1wCE" in w for w in lost.warnings), lost.warnings
    assert lost.probability != pytest.approx(direct.probability, abs=1e-6)


def test_dicom_source_file_needs_uids_a_resolver_and_an_existing_file(series, headless_scene):
    _, read, files = series
    node = _node(headless_scene, read)
    uid = node.GetAttribute("DICOM.instanceUIDs").split()[0]
    assert nodes.dicom_source_file(node, files.get) == files[uid]
    assert nodes.dicom_source_file(node, None) is None
    assert nodes.dicom_source_file(node, lambda u: "/no/such/file.dcm") is None
    assert nodes.dicom_source_file(_node(headless_scene, read, False), files.get) is None
    named = {"T1wCE": node, "FLAIR": _node(headless_scene, read, False)}
    assert nodes.dicom_source_files(named, files.get) == {"T1wCE": files[uid]}


def test_cli_applies_voi_dicom_to_a_volume_file(series, package, tmp_path, headless_scene):
    folder, read, files = series
    study = tmp_path / "input"
    study.mkdir()
    io.save_node(_node(headless_scene, read, False), study / "T1wCE.nrrd")
    first = sorted(files.values())[0]

    def infer(*extra):
        out = tmp_path / f"out{len(extra)}"
        arguments = widgetlogic.infer_arguments(study, str(package), out, voi_dicom=dict(extra))
        proc = subprocess.run([sys.executable, "-m", "MedDLLib.cli", *arguments], capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr
        return json.loads((out / "result.json").read_text())

    direct = logic.compute({"T1wCE": read}, package)
    named = infer(("T1wCE", first))
    assert named["probability"] == pytest.approx(direct.probability, abs=1e-5)
    assert not [w for w in named["warnings"] if "VOI" in w]
    plain = infer()
    assert any("VOI LUT not applied to T1wCE" in w for w in plain["warnings"])
    assert plain["probability"] != pytest.approx(direct.probability, abs=1e-5)


def test_voi_dicom_argument_errors_name_the_problem(series, tmp_path):
    _, _, files = series
    first = next(iter(files.values()))
    assert cli.parse_voi_dicom([f"T1wCE={first}"]) == {"T1wCE": first}
    assert cli.parse_voi_dicom(None) == {}
    with pytest.raises(InputError, match="expected SEQUENCE=FILE"):
        cli.parse_voi_dicom([first])
    with pytest.raises(InputError, match="'DWI' is not one of"):
        cli.parse_voi_dicom([f"DWI={first}"])
    text = tmp_path / "notes.txt"
    text.write_text("not DICOM")
    with pytest.raises(InputError, match="cannot read .*notes.txt as DICOM"):
        cli.parse_voi_dicom([f"T1wCE={text}"])
