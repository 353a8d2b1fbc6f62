"""LungSurvival: TCIA-style cohort reader, chest phantoms with a planted survival signal, segmentation on phantoms."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from LungSurvivalLib import dataset, phantom, preprocess
from LungSurvivalLib.preprocess import LEFT_LUNG, RIGHT_LUNG
from MedDLLib.dicomwrite import write_series
from MedDLLib.errors import InputError
from MedDLLib.geometry import Volume
from MedDLLib.evaluation import concordance_index


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("lung_cohort")
    manifest = phantom.write_dataset(root, 6, seed=4)
    return root, manifest


def test_phantom_layout_clinical_table_and_survival_signal(cohort):
    root, manifest = cohort
    found = dataset.scan_dataset(root)
    assert len(found.studies) == 6 and not found.unusable
    truth = {t["patient_id"]: t for t in manifest["truth"]}
    for study in found.studies:
        parts = study.folder.relative_to(root).parts
        assert parts[0] == phantom.COLLECTION and parts[1] == study.patient_id
        assert " " in parts[2] and parts[3].split(".")[0].isdigit()  # TCIA names: dates, spaces, series numbers
        t = truth[study.patient_id]
        assert study.time_days == pytest.approx(t["time_days"], abs=0.05) and study.event == t["event"]
        volume = study.read()
        assert volume.array.shape == (24, 64, 64) and volume.array.min() == -2000  # padding survives the DICOM
    # the planted signal on a larger draw (no DICOM): risk follows the diameter; times follow the risk
    rng = np.random.default_rng(0)
    d = rng.uniform(*phantom.DIAMETER_RANGE_MM, 400)
    risk = phantom.tumour_risk(d) + phantom.RISK_NOISE_SD * rng.standard_normal(400)
    from MedDLLib.phantoms import survival_times

    time, event = survival_times(risk, rng)
    assert 0.2 < 1 - event.mean() < 0.45
    assert concordance_index(time, d, event) > 0.75  # what a perfect diameter reader can reach


def test_phantom_lungs_segmented_with_tumour_on_the_right_side(cohort):
    root, manifest = cohort
    for study, truth in zip(dataset.scan_dataset(root).studies, manifest["truth"]):
        volume = study.read()
        seg = preprocess.segment_lungs(volume)
        assert 500 < seg.right_ml < 3000 and 500 < seg.left_ml < 3000
        k, j, i = (int(round(c)) for c in truth["centre_kji"])
        assert seg.labels[k, j, i] == (RIGHT_LUNG if truth["side"] == "right" else LEFT_LUNG)
        assert not (seg.labels > 0)[volume.array > 200].any()  # table and spine are never lung
        cand = preprocess.tumour_candidate(volume.array, seg.labels > 0)
        assert cand is not None and np.linalg.norm(np.array(cand) - np.array(truth["centre_kji"]) * [1, 1, 1]) < 3.0


def test_reader_reports_unusable_studies_and_clinical_problems(cohort, tmp_path):
    root, manifest = cohort
    shutil.copytree(root / phantom.COLLECTION, tmp_path / phantom.COLLECTION)
    rows = (root / "clinical.csv").read_text().splitlines()
    rows.append("LUNGPH-999,70,male,abc,1")  # bad time
    rows.append("LUNGPH-998,70,male,100,maybe")  # bad event
    rows.append("LUNGPH-997,70,male,100,Dead")  # no images
    (tmp_path / "clinical.csv").write_text("\n".join(rows) + "\n")
    study = manifest["truth"][0]
    volume, _, _ = phantom.chest_ct(np.random.default_rng(1), 32, 24)
    # patient 0 gets a second CT series; a new patient has too few slices; another has no clinical row
    write_series(tmp_path / "extra" / "2.000000-second-1", volume, patient_id=study["patient_id"], pixel_representation=1)
    write_series(tmp_path / "short" / "1.000000-scout-2", Volume(volume.array[:5], volume.geometry),
                 patient_id="LUNGPH-500", pixel_representation=1)
    write_series(tmp_path / "noclin" / "1.000000-ct-3", volume, patient_id="LUNGPH-501", pixel_representation=1)
    found = dataset.scan_dataset(tmp_path)
    assert len(found.studies) == 5
    assert "several CT series" in found.unusable[study["patient_id"]]
    assert "only 5 slices" in found.unusable["LUNGPH-500"]
    assert "no row in the clinical CSV" in found.unusable["LUNGPH-501"]
    text = "\n".join(found.problems)
    assert "LUNGPH-999" in text and "survival time" in text and "LUNGPH-998" in text and "LUNGPH-997" in text
    # min_slices is the caller's choice (the seed recipe used 50)
    assert len(dataset.scan_dataset(tmp_path, min_slices=50).studies) == 0


def test_clinical_columns_by_usual_names(tmp_path):
    (tmp_path / "c.csv").write_text("patient_id,survival_days,vital_status\nA,100,Dead\nB,200.5,Alive\n")
    table, problems = dataset.read_clinical(tmp_path / "c.csv")
    assert table == {"A": (100.0, 1), "B": (200.5, 0)} and not problems
    (tmp_path / "d.csv").write_text("who,when\nA,1\n")
    with pytest.raises(InputError, match="patient id"):
        dataset.read_clinical(tmp_path / "d.csv")
    with pytest.raises(InputError, match="several CSV"):
        dataset.find_clinical_csv(tmp_path)
