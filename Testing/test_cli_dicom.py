"""``meddl convert`` / ``meddl inspect`` end to end: DICOM -> Slicer volume node -> NRRD (Slicer's storage node),
compared with SimpleITK's ImageSeriesReader on the same, GDCM-sorted files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from MedDLLib import cli, dicom, dicomwrite
from MedDLLib.geometry import Geometry, Volume

from test_dicom import ORIENTATIONS, linear_hu, random_volume

MEDDL = Path(sys.executable).with_name("meddl")


def simpleitk_series(files: list[Path], folder: Path) -> sitk.Image:
    """SimpleITK's reading of exactly ``files``: linked into ``folder``, sorted by GDCM, read by ImageSeriesReader."""
    folder.mkdir()
    for f in files:
        os.symlink(f, folder / f.name)
    reader = sitk.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(str(folder))
    assert len(names) == len(files)
    reader.SetFileNames(names)
    return reader.Execute()


def convert(folder: Path, out: Path, *extra: str) -> sitk.Image:
    """Run ``meddl convert`` in-process and read its output with SimpleITK."""
    assert cli.main(["convert", str(folder), str(out), *extra]) == 0
    return sitk.ReadImage(str(out))


def assert_same_image(ours: sitk.Image, ref: sitk.Image, check_z_spacing: bool = True) -> None:
    np.testing.assert_allclose(ours.GetOrigin(), ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(ours.GetDirection(), ref.GetDirection(), atol=1e-6)
    spacing = slice(None) if check_z_spacing else slice(0, 2)
    np.testing.assert_allclose(ours.GetSpacing()[spacing], ref.GetSpacing()[spacing], atol=1e-5)
    assert ours.GetSize() == ref.GetSize()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(ref))


def test_convert_every_real_series_matches_simpleitk(real_data, tmp_path):
    # the chest CT, 9 transfer syntaxes, 3 kinds of 12-bit pixels (the scanner export beside them mixes colour
    # and position-less objects that SimpleITK's series reader cannot be compared on; it has its own tests)
    folders = ("ct_chest_tcia_lung_pet_ct_dx_A0002", "dcm_qa_ts", "dcm_qa_12bit")
    found = [s for folder in folders for s in dicom.find_series(real_data / folder)]
    assert len(found) == 13
    for n, series in enumerate(found):
        ours = convert(series.files[0].parent, tmp_path / f"{n}.nrrd", "--series", series.uid)
        ref = simpleitk_series(series.files, tmp_path / f"ref{n}")
        assert_same_image(ours, ref)


def test_convert_real_chest_ct_matches_expected_values(real_data, tmp_path):
    expected = json.loads((real_data / "expected_values.json").read_text())["ct_chest_tcia_lung_pet_ct_dx_A0002/dicom"]
    image = convert(real_data / "ct_chest_tcia_lung_pet_ct_dx_A0002" / "dicom", tmp_path / "ct.nrrd")
    assert list(image.GetSize()) == expected["sitk_size_xyz"]
    np.testing.assert_allclose(image.GetSpacing(), expected["sitk_spacing_xyz"], atol=1e-4)
    np.testing.assert_allclose(image.GetOrigin(), expected["sitk_origin_lps"], atol=1e-3)
    np.testing.assert_allclose(image.GetDirection(), expected["sitk_direction"], atol=1e-9)
    array = sitk.GetArrayFromImage(image)
    low, high, median = expected["modality_lut_value_min_max_median"]
    assert (array.min(), array.max(), np.median(array)) == (low, high, median)


SYNTHETIC = {
    **{f"{name}_shuffled": dict(direction=direction) for name, direction in ORIENTATIONS.items()},
    "missing_rescale_slope": dict(write=dict(rescale_slope=None)),
    "signed_12bit_mr": dict(low=-2048, high=2048, write=dict(modality="MR", rescale_slope=None, rescale_intercept=None,
                                                            bits_stored=12, pixel_representation=1)),
    "unsigned_16bit_mr": dict(low=0, high=65536, write=dict(modality="MR", rescale_slope=None, rescale_intercept=None)),
    "implicit_vr": dict(write=dict(transfer_syntax=ImplicitVRLittleEndian, bits_stored=12)),
    "big_endian": dict(write=dict(transfer_syntax=ExplicitVRBigEndian, bits_stored=12)),
    "rle": dict(write=dict(transfer_syntax=RLELossless, bits_stored=12)),
    "jpeg2000": dict(write=dict(transfer_syntax=JPEG2000Lossless, bits_stored=12)),
}


@pytest.mark.parametrize("case", list(SYNTHETIC))
def test_convert_synthetic_series_matches_simpleitk(tmp_path, case):
    spec = SYNTHETIC[case]
    phantom = random_volume(direction=spec.get("direction", np.eye(3)), low=spec.get("low", -1000),
                            high=spec.get("high", 3000))
    files = dicomwrite.write_series(tmp_path / "dicom", phantom, **spec.get("write", {}))
    ours = convert(tmp_path / "dicom", tmp_path / "out.nrrd")
    assert_same_image(ours, simpleitk_series(files, tmp_path / "ref"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ours), phantom.array)  # and the phantom itself


def test_convert_monochrome1_against_pydicom(tmp_path):
    phantom = random_volume(low=0, high=4096)
    files = dicomwrite.write_series(tmp_path / "dicom", phantom, modality="CR", rescale_slope=None,
                                    rescale_intercept=None, bits_stored=12, photometric="MONOCHROME1")
    ours = convert(tmp_path / "dicom", tmp_path / "out.nrrd")
    raw = {f: pydicom.dcmread(f).pixel_array for f in files}  # pydicom gives the stored values
    expected = 4095 - np.stack([raw[f] for f in dicom.find_series(tmp_path / "dicom")[0].files])
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ours), expected)
    ref = simpleitk_series(files, tmp_path / "ref")  # GDCM inverts the same way
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(ref))
    # GDCM ignores PixelSpacing in CR files (1 mm pixels); the geometry written is the one in the files
    np.testing.assert_allclose(ours.GetSpacing(), phantom.geometry.spacing_mm, atol=1e-5)
    np.testing.assert_allclose(ours.GetOrigin(), phantom.geometry.origin_lps_mm, atol=1e-4)


def test_convert_single_slice_takes_slice_thickness(tmp_path, capsys):
    phantom = random_volume(shape=(1, 32, 32))
    files = dicomwrite.write_series(tmp_path / "dicom", phantom, extra={"SliceThickness": "3"})
    ours = convert(tmp_path / "dicom", tmp_path / "out.nrrd")
    ref = simpleitk_series(files, tmp_path / "ref")
    assert_same_image(ours, ref, check_z_spacing=False)  # SimpleITK says 1 mm: it ignores SliceThickness
    assert ours.GetSpacing()[2] == pytest.approx(3.0)
    assert "slice spacing 3 mm taken from SliceThickness (0018,0050)" in capsys.readouterr().err


def test_convert_two_echoes_needs_series_and_reads_each(tmp_path, capsys):
    echoes = [random_volume(seed=5, low=0, high=3000), random_volume(seed=6, low=0, high=3000)]
    uid = "1.2.826.0.1.3680043.10.999.7"
    common = dict(modality="MR", rescale_slope=None, rescale_intercept=None, series_uid=uid, study_uid=uid + ".0")
    files = [dicomwrite.write_series(tmp_path / "dicom", v, echo_number=n + 1, echo_time_ms=10.0 * (n + 1), seed=n,
                                     **common)
             for n, v in enumerate(echoes)]
    assert cli.main(["convert", str(tmp_path / "dicom"), str(tmp_path / "x.nrrd")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{uid}#echo=1" in err and f"{uid}#echo=2" in err
    assert not (tmp_path / "x.nrrd").exists()
    for n, (echo, echo_files) in enumerate(zip(echoes, files)):
        ours = convert(tmp_path / "dicom", tmp_path / f"echo{n + 1}.nrrd", "--series", f"{uid}#echo={n + 1}")
        assert_same_image(ours, simpleitk_series(echo_files, tmp_path / f"ref{n}"))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(ours), echo.array)


@pytest.mark.parametrize("kind", ["tilt", "gaps"])
def test_convert_irregular_series_resampled_or_refused(tmp_path, capsys, kind):
    template = Volume(np.zeros((8, 32, 32)), Geometry((1.0, 1.0, 2.0), (-16.0, -16.0, 0.0)))
    options = dict(gantry_tilt_deg=12.0) if kind == "tilt" else dict(slice_offsets_mm=[0, 2, 4, 6, 8, 12, 14, 16])
    points = dicomwrite.pixel_positions_lps_mm(template, **options)
    dicomwrite.write_series(tmp_path / "dicom", template.with_array(linear_hu(points)), **options)

    assert cli.main(["convert", str(tmp_path / "dicom"), str(tmp_path / "no.nrrd"), "--irregular", "refuse"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not one regular volume" in err
    assert ("gantry tilt" if kind == "tilt" else "uneven slice gaps") in err
    assert not (tmp_path / "no.nrrd").exists()

    image = convert(tmp_path / "dicom", tmp_path / "out.nrrd")
    assert "resampled onto a regular orthogonal grid" in capsys.readouterr().err
    expected = dicom.read_dicom_folder(tmp_path / "dicom")  # the resampled volume, checked in test_dicom.py
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), expected.array)
    np.testing.assert_allclose(image.GetOrigin(), expected.geometry.origin_lps_mm, atol=1e-4)
    np.testing.assert_allclose(image.GetSpacing(), expected.geometry.spacing_mm, atol=1e-5)
    np.testing.assert_allclose(np.reshape(image.GetDirection(), (3, 3)), expected.geometry.direction, atol=1e-6)


def test_inspect_text_and_json(tmp_path, capsys):
    template = Volume(np.zeros((6, 32, 32)), Geometry((1.0, 1.0, 2.0)))
    dicomwrite.write_series(tmp_path / "a", template, gantry_tilt_deg=10, series_description="tilted")
    dicomwrite.write_series(tmp_path / "b", template, series_description="plain")
    (tmp_path / "b" / "notes.txt").write_text("x")
    assert cli.main(["inspect", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "2 volumes" in text and "problem: gantry tilt: the slices are sheared by 10.00 deg" in text
    assert "no problems: one regular volume" in text and "notes.txt: not a DICOM file" in text
    assert cli.main(["inspect", str(tmp_path), "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert {e.get("description") for e in entries} == {"tilted", "plain", None}


def run_meddl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(MEDDL), *args], capture_output=True, text=True, timeout=120)


def test_meddl_command_bad_input_exits_with_one_line(tmp_path):
    """The installed ``meddl`` command: exit status 1 and one line naming the file and the problem."""
    empty = tmp_path / "empty"
    empty.mkdir()
    files = dicomwrite.write_series(tmp_path / "broken", random_volume())
    ds = pydicom.dcmread(files[4])
    del ds.PixelData
    ds.save_as(files[4])
    for folder, expected in ((empty, f"{empty}: no DICOM image series found"),
                             (tmp_path / "broken", f"{files[4]}: no Pixel Data (7FE0,0010) element")):
        result = run_meddl("convert", str(folder), str(tmp_path / "out.nrrd"))
        assert result.returncode == 1, result.stderr
        lines = result.stderr.strip().splitlines()
        assert lines == [f"meddl convert: error: {expected}"], result.stderr
        assert "Traceback" not in result.stderr and not (tmp_path / "out.nrrd").exists()


def test_convert_renders_middle_slice_png_of_real_ct(real_data, tmp_path):
    """The README's main-job step: real chest CT -> NRRD + middle slice rendered by Slicer's slice logic."""
    from PIL import Image

    folder = real_data / "ct_chest_tcia_lung_pet_ct_dx_A0002" / "dicom"
    assert cli.main(["convert", str(folder), str(tmp_path / "ct.nrrd"), "--png", str(tmp_path / "mid.png")]) == 0
    rgb = np.asarray(Image.open(tmp_path / "mid.png").convert("L")).astype(float)
    assert rgb.shape == (512, 512)
    # soft-tissue window of the file (40/350 HU): air outside the body is black, the body is not
    assert rgb[:20, :].mean() < 5 and rgb[200:300, 200:300].mean() > 60
