"""Shared phantom primitives: exact plane re-indexing, shapes, survival times, the dataset driver."""

from __future__ import annotations

import json

import numpy as np
import pytest

from MedDLLib import phantoms
from MedDLLib.geometry import Geometry, Volume
from MedDLLib.resample import resample_to_reference


@pytest.mark.parametrize("plane", ["axial", "sagittal", "coronal"])
def test_as_plane_keeps_every_voxel_at_its_physical_position(plane):
    rng = np.random.default_rng(1)
    axial = Volume(rng.integers(-1000, 1000, (5, 7, 9)).astype(np.int16),
                   Geometry((0.8, 0.9, 2.5), (-30.0, -40.0, 12.0)))
    other = phantoms.as_plane(axial, plane)
    normal = other.geometry.direction[:, 2]
    expected_normal = {"axial": [0, 0, 1], "sagittal": [1, 0, 0], "coronal": [0, 1, 0]}[plane]
    np.testing.assert_allclose(np.abs(normal), expected_normal)
    back = resample_to_reference(other, axial, is_label=True)
    np.testing.assert_array_equal(back.array, axial.array)
    assert np.isclose(np.prod(other.geometry.spacing_mm), np.prod(axial.geometry.spacing_mm))


def test_ellipsoid_volume_and_noise():
    mask = phantoms.ellipsoid_mask((40, 40, 40), (20, 20, 20), (8, 10, 12))
    assert abs(mask.sum() / (4 / 3 * np.pi * 8 * 10 * 12) - 1) < 0.03
    noise = phantoms.smooth_noise((32, 32), 2.0, np.random.default_rng(0))
    assert abs(noise.mean()) < 1e-5 and abs(noise.std() - 1) < 1e-4


def test_survival_times_follow_risk_and_censoring():
    rng = np.random.default_rng(0)
    risk = np.repeat([-1.0, 1.0], 2000)
    time, event = phantoms.survival_times(risk, rng, censor_fraction=0.3)
    assert 0.2 < 1 - event.mean() < 0.45  # censoring near the requested fraction (plus follow-up limit)
    assert np.median(time[risk > 0]) < 0.5 * np.median(time[risk < 0])  # higher risk dies sooner
    assert time.min() >= 1.0


class _Toy(phantoms.PhantomGenerator):
    task = "toy"

    def write_case(self, out, index, rng):
        value = float(rng.random())
        (out / f"case{index}.txt").write_text(str(value))
        return {"case": f"case{index}", "value": np.float64(value)}

    def write_index(self, out, truths, rng):
        (out / "labels.csv").write_text("\n".join(t["case"] for t in truths))


def test_dataset_driver_is_reproducible_per_case(tmp_path):
    m1 = phantoms.write_phantom_dataset(_Toy(), tmp_path / "a", cases=3, seed=7)
    m2 = phantoms.write_phantom_dataset(_Toy(), tmp_path / "b", cases=5, seed=7)
    assert [t["value"] for t in m1["truth"]] == [t["value"] for t in m2["truth"][:3]]
    saved = json.loads((tmp_path / "a" / "phantom.json").read_text())
    assert saved["task"] == "toy" and saved["synthetic"] is True and len(saved["truth"]) == 3
    assert (tmp_path / "a" / "labels.csv").read_text().splitlines() == ["case0", "case1", "case2"]
    m3 = phantoms.write_phantom_dataset(_Toy(), tmp_path / "c", cases=3, seed=8)
    assert [t["value"] for t in m3["truth"]] != [t["value"] for t in m1["truth"]]
