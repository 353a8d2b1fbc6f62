"""Real CT the suite had not seen (issue 18): head vs chest decided from anatomy, the user's override recorded, and a
scanner export (DICOMDIR, vendor directory files, screen captures) read as the one image stack it holds.

* :func:`ICHDetectorLib.preprocess.check_head_ct` on every real CT beside the repository: the TCIA chest CT is
  refused, the Philips head phantom export is accepted; head phantoms lying on a head rest with foam padding and
  partial-volume air (-950..-400 HU, what refused real head CTs before) are accepted, chest phantoms refused.
* ``meddl infer ich --accept-non-head`` runs a chest CT and writes why into ``result.json``.
* The Philips export: ``inspect`` names the DICOMDIR as skipped (not corrupt), ``convert`` reads the 28-slice axial
  series with the same geometry and voxels as SimpleITK (GDCM) reading that series' folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from MedDLLib import cli
from MedDLLib.errors import InputError
from MedDLLib.geometry import Volume

REAL_DATA = Path(os.environ.get("MEDDL_REAL_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"
                                / "real"))
CHEST = REAL_DATA / "ct_chest_tcia_lung_pet_ct_dx_A0002" / "dicom"
EXPORT = REAL_DATA / "ct_philips_export_dicomdir" / "export"
EXPORT_AXIAL = EXPORT / "S21570" / "S2010"

needs_real = pytest.mark.skipif(not (CHEST.is_dir() and EXPORT.is_dir()), reason=f"real CT not found in {REAL_DATA}")


def _old_lung_fraction(array: np.ndarray) -> float:
    """What the earlier check measured: lung-density voxels (-950..-400 HU) over voxels above -400 HU."""
    return float(((array > -950) & (array <= -400)).sum()) / max(int((array > -400).sum()), 1)


def head_on_head_rest(seed: int, size: int = 96, n_slices: int = 12, *, padding_hu: float = -700.0,
                      padding_mm: float = 18.0, cushion_sides: bool = True) -> Volume:
    """An ICH head phantom as a real head CT shows it: lying on a curved head rest (a 4 mm plastic shell at
    +150 HU) with foam padding (``padding_hu``, ``padding_mm`` thick) between the shell and the back of the head,
    optional side cushions, and a 1-pixel partial-volume rim (-550 HU) around the skin."""
    from scipy import ndimage as ndi

    from ICHDetectorLib import phantom

    volume, _, _ = phantom.head_ct(np.random.default_rng(seed), size, n_slices, ())
    hu = np.array(volume.array, dtype=np.float32)
    spacing = volume.geometry.spacing_mm[0]
    jj, ii = np.mgrid[:size, :size]
    for k in range(n_slices):
        head = hu[k] > -300
        if not head.any():
            continue
        rim = ndi.binary_dilation(head) & ~head
        hu[k][rim] = -550.0  # partial volume of skin and air
        cj, ci = ndi.center_of_mass(head)
        radius = np.sqrt(head.sum() / np.pi)
        r = np.hypot(jj - cj, ii - ci)
        inner, pad = radius + 1, radius + 1 + padding_mm / spacing
        back = jj > cj - 0.2 * radius  # the head rest cradles the back of the head (posterior: larger j)
        hu[k][(r > inner) & (r <= pad) & back & (hu[k] < -300)] = padding_hu
        hu[k][(r > pad) & (r <= pad + 4 / spacing) & back] = 150.0
        if cushion_sides:
            side = (np.abs(ii - ci) > radius + 1) & (np.abs(ii - ci) < radius + 1 + 25 / spacing) & (
                np.abs(jj - cj) < radius * 0.7)
            hu[k][side & (hu[k] < -300)] = padding_hu + 100
    return volume.with_array(hu)


@pytest.mark.parametrize("seed,padding_hu,padding_mm,sides", [
    (0, -700.0, 18.0, True), (1, -900.0, 25.0, True), (2, -450.0, 12.0, False), (3, -600.0, 30.0, True),
])
def test_head_on_head_rest_with_padding_is_a_head(seed, padding_hu, padding_mm, sides):
    from ICHDetectorLib import preprocess

    volume = head_on_head_rest(seed, padding_hu=padding_hu, padding_mm=padding_mm, cushion_sides=sides)
    anatomy = preprocess.head_or_chest(volume)
    assert anatomy.looks_like == "head", anatomy
    assert preprocess.check_head_ct(volume) is None
    if seed in (0, 1, 3):  # the padding alone made the earlier rule call these chests
        assert _old_lung_fraction(volume.array) > 0.15


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_chest_phantoms_are_refused(seed):
    from ICHDetectorLib import preprocess
    from LungSurvivalLib import phantom as lung_phantom

    out = lung_phantom.chest_ct(np.random.default_rng(seed), 64, 24)
    volume = out[0] if isinstance(out, tuple) else out
    volume = Volume(volume.array, volume.geometry, {"modality": "CT"})
    with pytest.raises(InputError, match="does not look like a head CT.*lungs.*--accept-non-head"):
        preprocess.check_head_ct(volume)
    note = preprocess.check_head_ct(volume, accept_non_head=True)
    assert note and "accept-non-head" in note


@needs_real
def test_every_real_ct_is_judged_by_anatomy():
    from MedDLLib.dicom import read_dicom_folder

    from ICHDetectorLib import preprocess

    chest = read_dicom_folder(CHEST)
    with pytest.raises(InputError, match="does not look like a head CT"):
        preprocess.check_head_ct(chest)
    chest_anatomy = preprocess.head_or_chest(chest)
    assert chest_anatomy.looks_like == "chest" and chest_anatomy.lung_slices > chest_anatomy.skull_slices
    head = read_dicom_folder(EXPORT)  # the scanner export: the one image stack in it
    anatomy = preprocess.head_or_chest(head)
    assert anatomy.looks_like == "head" and anatomy.skull_slices >= anatomy.body_slices // 2, anatomy
    assert preprocess.check_head_ct(head) is None


@needs_real
def test_scanner_export_inspect_names_the_dicomdir(capsys):
    assert cli.main(["inspect", str(EXPORT)]) == 0
    out = capsys.readouterr().out
    assert "DICOMDIR: a DICOMDIR / media directory" in out and "corrupt" not in out
    assert "STD BRAIN 5MM: CT, 28 files of 512x512, axial" in out
    assert cli.main(["inspect", "--json", str(EXPORT)]) == 0
    entries = json.loads(capsys.readouterr().out, parse_constant=lambda v: pytest.fail(f"not strict JSON: {v}"))
    assert sum("uid" in e for e in entries) == 7


@needs_real
def test_scanner_export_converts_like_simpleitk(tmp_path, capsys):
    import SimpleITK as sitk

    out = tmp_path / "head.nrrd"
    assert cli.main(["convert", str(EXPORT), str(out)]) == 0
    err = capsys.readouterr().err
    assert "set aside" in err and "Exam Summary" in err
    ours = sitk.ReadImage(str(out))
    reader = sitk.ImageSeriesReader()
    files = reader.GetGDCMSeriesFileNames(str(EXPORT_AXIAL))
    assert len(files) == 28
    reader.SetFileNames(files)
    theirs = reader.Execute()
    assert ours.GetSize() == theirs.GetSize() == (512, 512, 28)
    np.testing.assert_allclose(ours.GetSpacing(), theirs.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(ours.GetOrigin(), theirs.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(ours.GetDirection(), theirs.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(theirs))


@pytest.fixture(scope="module")
def ich_model(tmp_path_factory) -> Path:
    """A tiny ICH model (4 phantom studies, 16 px, one epoch): enough to run ``meddl infer ich``."""
    root = tmp_path_factory.mktemp("ich_model")
    assert cli.main(["phantom", "ich", str(root / "data"), "--cases", "4", "--size", "16", "--slices", "4"]) == 0
    assert cli.main(["train", "ich", "--data", str(root / "data"), "--out", str(root / "model"), "--epochs", "1",
                     "--size", "16", "--batch-size", "8"]) == 0
    return root / "model"


@needs_real
def test_infer_ich_refuses_chest_and_records_the_override(ich_model, tmp_path, capsys):
    out = tmp_path / "chest"
    assert cli.main(["infer", "ich", "--input", str(CHEST), "--output", str(out), "--model", str(ich_model)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not look like a head CT" in err[0] and "--accept-non-head" in err[0]
    assert not out.exists()
    assert cli.main(["infer", "ich", "--input", str(CHEST), "--output", str(out), "--model", str(ich_model),
                     "--accept-non-head"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert "does not look like a head CT" in result["accepted_non_head"]


@needs_real
def test_infer_ich_on_the_scanner_export(ich_model, tmp_path):
    out = tmp_path / "head"
    assert cli.main(["infer", "ich", "--input", str(EXPORT), "--output", str(out), "--model", str(ich_model)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["n_slices"] == 28 and "accepted_non_head" not in result
