"""DICOM SEG output (MedDLLib.dicomseg) and segment terminology (MedDLLib.terminology).

Every SEG written here is read back with highdicom (labels equal voxel for voxel on the source grid, frame
positions/orientation/spacing equal to the source series') and checked with ``dciodvfy`` (dicom3tools): no
``Error`` line. The ``.seg.nrrd`` terminology is read back through slicer-core's segmentation storage node.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from MedDLLib import dicom, dicomseg, terminology
from MedDLLib.dicomwrite import write_series
from MedDLLib.errors import InputError
from MedDLLib.geometry import Geometry, Volume

LUNGS = {1: ("Right lung", (0.50, 0.68, 0.90)), 2: ("Left lung", (0.90, 0.70, 0.45))}
REAL_CT = "ct_chest_tcia_lung_pet_ct_dx_A0002/dicom"


def dciodvfy_errors(path: Path) -> list[str]:
    """The ``Error`` lines dciodvfy prints for ``path`` (skips when dicom3tools is not installed)."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy not installed (apt-get install dicom3tools; scripts/setup.sh does it)")
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    lines = (run.stdout + run.stderr).splitlines()
    assert any("Segmentation" in line for line in lines), f"dciodvfy did not recognise a Segmentation: {lines[:5]}"
    return [line for line in lines if line.startswith("Error")]


def _series(folder: Path, geometry: Geometry, shape=(7, 20, 24), **kwargs) -> Volume:
    write_series(folder, Volume(np.zeros(shape, np.int16), geometry), **kwargs)
    return dicom.read_dicom_folder(folder)


def _labels(shape) -> np.ndarray:
    labels = np.zeros(shape, np.uint8)
    nk, nj, ni = shape
    labels[1: nk // 2 + 1, 2: nj // 2, 3: ni // 2] = 1  # right lung: several slices, asymmetric in-plane
    labels[nk // 2: nk - 1, nj // 2: nj - 2, ni // 2: ni - 1] = 2
    return labels


def _frame_positions(path: Path) -> np.ndarray:
    ds = pydicom.dcmread(path)
    return np.array([[float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient]
                     for f in ds.PerFrameFunctionalGroupsSequence])


OBLIQUE = Geometry((0.7, 0.8, 2.5), (-30.0, 12.0, 40.0),
                   ((np.cos(0.3), np.sin(0.3), 0.0), (-np.sin(0.3), np.cos(0.3), 0.0), (0.0, 0.0, 1.0)))


def test_phantom_series_round_trip_and_references(tmp_path):
    """Oblique phantom CT: SEG labels == labelmap, every frame references the source image at its position."""
    volume = _series(tmp_path / "ct", OBLIQUE)
    labels = _labels(volume.shape_kji)
    path = dicomseg.write_dicom_seg(labels, volume.geometry, LUNGS, volume.metadata["files"],
                                    tmp_path / "lungs.seg.dcm", model_name="lung-net", model_version="1.2")
    back, info = dicomseg.read_dicom_seg(path, volume.geometry, volume.shape_kji)
    assert np.array_equal(back, labels)
    assert dciodvfy_errors(path) == []
    # Coded segments: SNOMED category/type + laterality modifier.
    assert info[1] == {"label": "Right lung", "category": "SCT^123037004", "type": "SCT^39607008",
                       "modifier": "SCT^24028007", "region": ""}
    assert info[2]["modifier"] == "SCT^7771000"
    ds = pydicom.dcmread(path)
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    segment = ds.SegmentSequence[0]
    assert segment.SegmentAlgorithmType == "AUTOMATIC" and segment.SegmentAlgorithmName == "lung-net"
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "lung-net" and algorithm.AlgorithmVersion == "1.2"
    assert algorithm.AlgorithmSource.startswith("MedDL ")
    # Geometry against the source series: frame k references the file at label slice k, same position.
    sources = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: pydicom.dcmread(f, stop_before_pixels=True)
               for f in volume.metadata["files"]}
    source_of = {}
    for item in ds.PerFrameFunctionalGroupsSequence:
        uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        src = sources[uid]
        assert np.allclose([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient],
                           [float(v) for v in src.ImagePositionPatient], atol=1e-4)
        source_of[uid] = src
    first = next(iter(sources.values()))
    shared = ds.SharedFunctionalGroupsSequence[0]
    assert np.allclose([float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient],
                       [float(v) for v in first.ImageOrientationPatient], atol=1e-6)
    assert np.allclose([float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing],
                       [float(v) for v in first.PixelSpacing])
    assert ds.FrameOfReferenceUID == first.FrameOfReferenceUID and ds.StudyInstanceUID == first.StudyInstanceUID
    referenced = {i.ReferencedSOPInstanceUID for i in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == set(sources)


def test_reversed_slice_order_and_flipped_grid(tmp_path):
    """Files given in reverse and a label grid whose k axis runs the other way give the same SEG content."""
    volume = _series(tmp_path / "ct", OBLIQUE)
    labels = _labels(volume.shape_kji)
    files = list(reversed(volume.metadata["files"]))
    g = volume.geometry
    m = g.ijk_to_lps()
    flipped = Geometry(g.spacing_mm, tuple(m[:3] @ [0, 0, volume.shape_kji[0] - 1, 1]),
                       tuple(map(tuple, g.direction * [1, 1, -1])))
    a = dicomseg.write_dicom_seg(labels, g, LUNGS, files, tmp_path / "a.seg.dcm")
    b = dicomseg.write_dicom_seg(labels[::-1].copy(), flipped, LUNGS, files, tmp_path / "b.seg.dcm")
    assert np.array_equal(dicomseg.read_dicom_seg(a, g, labels.shape)[0], labels)
    assert np.array_equal(dicomseg.read_dicom_seg(b, g, labels.shape)[0], labels)
    assert np.array_equal(dicomseg.read_dicom_seg(b, flipped, labels.shape)[0], labels[::-1])
    assert dciodvfy_errors(b) == []


def test_tilted_series_resampled_grid(tmp_path):
    """A gantry-tilted series read onto a regular grid: frames carry the resampled grid's positions (in the
    tilted source planes, shifted in-plane), the SEG reads back equal; ``aligned_only`` refuses it."""
    g = Geometry((0.8, 0.8, 3.0), (-10.0, -10.0, 0.0))
    volume = _series(tmp_path / "ct", g, gantry_tilt_deg=12.0)
    assert "tilt" in " ".join(volume.metadata["warnings"])
    labels = _labels(volume.shape_kji)
    with pytest.raises(InputError, match="not on the source images"):
        dicomseg.write_dicom_seg(labels, volume.geometry, LUNGS, volume.metadata["files"], tmp_path / "x.seg.dcm",
                                 aligned_only=True)
    assert not (tmp_path / "x.seg.dcm").exists()
    path = dicomseg.write_dicom_seg(labels, volume.geometry, LUNGS, volume.metadata["files"], tmp_path / "t.seg.dcm")
    back, _ = dicomseg.read_dicom_seg(path, volume.geometry, volume.shape_kji)
    assert np.array_equal(back, labels)
    ds = pydicom.dcmread(path)
    m = volume.geometry.ijk_to_lps()
    grid = {tuple(np.round(m[:3] @ [0, 0, k, 1], 3)) for k in range(volume.shape_kji[0])}
    sources = {tuple(np.round([float(v) for v in pydicom.dcmread(f).ImagePositionPatient], 3))
               for f in volume.metadata["files"]}
    frames = {tuple(np.round(p, 3)) for p in _frame_positions(path)}
    assert frames <= grid and len(frames - sources) >= 1
    assert ds.FrameOfReferenceUID == pydicom.dcmread(volume.metadata["files"][0]).FrameOfReferenceUID
    assert dciodvfy_errors(path) == []


def _elements(path: Path) -> list[tuple[str, str]]:
    """Every element of a SEG as (path of keywords, value), the UIDs and times of this instance left out."""
    volatile = {"SeriesInstanceUID", "SOPInstanceUID", "MediaStorageSOPInstanceUID", "ContentDate", "ContentTime",
                "SeriesDate", "SeriesTime", "InstanceCreationDate", "InstanceCreationTime", "ContributionDateTime",
                "DimensionOrganizationUID"}

    def walk(ds, prefix: str) -> list[tuple[str, str]]:
        out = []
        for element in ds:
            if element.VR == "SQ":
                for n, item in enumerate(element.value):
                    out += walk(item, f"{prefix}{element.keyword}[{n}].")
            elif element.keyword not in volatile:
                out.append((prefix + element.keyword, str(element.value)))
        return out

    return walk(pydicom.dcmread(path), "")


@pytest.mark.parametrize("kind", ["aligned", "reversed", "tilted"])
def test_the_readers_headers_give_the_same_seg_reading_one_file(tmp_path, kind, monkeypatch):
    """With the headers the reader parsed (``keep_headers``, as ``meddl infer`` passes them) the SEG is the one
    written from the files, element for element, and only its first frame's source file is read again (for the
    patient/study attributes highdicom copies): aligned, reversed slice order, resampled (tilted) series. A file
    whose header is not among them (``--dicom-source`` elsewhere) is read."""
    g = {"aligned": OBLIQUE, "reversed": Geometry((0.7, 0.8, 2.5), (0.0, 0.0, 0.0), np.diag([1.0, 1.0, -1.0])),
         "tilted": Geometry((0.8, 0.8, 3.0), (-10.0, -10.0, 0.0))}[kind]
    write_series(tmp_path / "ct", Volume(np.zeros((7, 20, 24), np.int16), g),
                 **({"gantry_tilt_deg": 12.0} if kind == "tilted" else {}))
    volume = dicom.read_dicom_folder(tmp_path / "ct", keep_headers=True)
    files, headers = volume.metadata["files"], volume.metadata["headers"]
    assert sorted(headers) == sorted(files)
    labels = _labels(volume.shape_kji)
    plain = dicomseg.write_dicom_seg(labels, volume.geometry, LUNGS, files, tmp_path / "plain.seg.dcm")
    read = []
    original = dicomseg._read_source
    monkeypatch.setattr(dicomseg, "_read_source", lambda path: read.append(path) or original(path))
    kept = dicomseg.write_dicom_seg(labels, volume.geometry, LUNGS, files, tmp_path / "kept.seg.dcm",
                                    source_headers=headers)
    assert len(read) == 1 and _elements(kept) == _elements(plain)
    del read[:]
    partial = dict(list(headers.items())[2:])
    dicomseg.write_dicom_seg(labels, volume.geometry, LUNGS, files, tmp_path / "partial.seg.dcm",
                             source_headers=partial)
    assert _elements(tmp_path / "partial.seg.dcm") == _elements(plain) and 2 <= len(read) <= 3
    assert not any("PatientName" in ds for ds in headers.values())  # the reader's headers are not changed


def test_real_ct_series(tmp_path, real_data):
    """The real TCIA chest CT (30 slices 512^2): round trip exact, frame positions = the source images'."""
    volume = dicom.read_dicom_folder(real_data / REAL_CT)
    labels = _labels(volume.shape_kji)
    path = dicomseg.write_dicom_seg(labels, volume.geometry, LUNGS, volume.metadata["files"], tmp_path / "ct.seg.dcm",
                                    model_name="lung", model_version="0.1")
    back, _ = dicomseg.read_dicom_seg(path, volume.geometry, volume.shape_kji)
    assert np.array_equal(back, labels)
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in volume.metadata["files"]]
    positions = {tuple(np.round([float(v) for v in h.ImagePositionPatient], 3)) for h in headers}
    assert {tuple(np.round(p, 3)) for p in _frame_positions(path)} <= positions
    assert dciodvfy_errors(path) == []
    assert path.stat().st_size < 2_000_000  # bit-packed frames, empty frames omitted


def test_empty_segment_kept_and_region_coded(tmp_path):
    """ICH: nothing found is a result: the empty 'suspected hemorrhage' segment is in the SEG, coded as
    hemorrhage with anatomic region brain."""
    volume = _series(tmp_path / "ct", Geometry((0.5, 0.5, 5.0)), shape=(4, 16, 16))
    path = dicomseg.write_dicom_seg(np.zeros(volume.shape_kji, np.uint8), volume.geometry,
                                    {1: ("suspected hemorrhage", (1.0, 0.2, 0.2))}, volume.metadata["files"],
                                    tmp_path / "ich.seg.dcm")
    back, info = dicomseg.read_dicom_seg(path, volume.geometry, volume.shape_kji)
    assert not back.any()
    assert info[1]["type"] == "SCT^50960005" and info[1]["region"] == "SCT^12738006"
    assert dciodvfy_errors(path) == []


def test_overlapping_brats_regions_as_stacked_masks(tmp_path):
    """Whole tumour > tumour core > enhancing tumour overlap: written as stacked masks, read back equal, each
    region coded (Lesion / Neoplasm / NCIt Enhancing Lesion, region brain)."""
    volume = _series(tmp_path / "mr", OBLIQUE, shape=(6, 16, 18), modality="MR", rescale_slope=None,
                     rescale_intercept=None)
    shape = volume.shape_kji
    whole = np.zeros(shape, np.uint8)
    whole[1:5, 2:14, 2:16] = 1
    core = np.zeros(shape, np.uint8)
    core[2:4, 4:10, 5:12] = 1
    enhancing = np.zeros(shape, np.uint8)
    enhancing[2:4, 4:6, 5:12] = 1
    masks = np.stack([whole, core, enhancing], axis=-1)
    segments = {1: ("whole tumour", (1.0, 0.8, 0.2)), 2: ("tumour core", (0.6, 0.9, 0.6)),
                3: ("enhancing tumour", (0.9, 0.1, 0.1))}
    path = dicomseg.write_dicom_seg(masks, volume.geometry, segments, volume.metadata["files"], tmp_path / "t.seg.dcm",
                                    model_name="brats_mri_segmentation")
    back, info = dicomseg.read_dicom_seg(path, volume.geometry, shape, stacked=True)
    assert np.array_equal(back, masks)
    assert [info[n]["type"] for n in (1, 2, 3)] == ["SCT^52988006", "SCT^108369006", "NCIt^C113842"]
    assert all(info[n]["region"] == "SCT^12738006" for n in (1, 2, 3))
    assert dciodvfy_errors(path) == []
    with pytest.raises(InputError, match="stacked masks"):
        dicomseg.write_dicom_seg(masks[..., :2], volume.geometry, segments, volume.metadata["files"],
                                 tmp_path / "bad.seg.dcm")


def test_segment_numbers_labels_as_they_are_or_mapped():
    """Values 1..N in 8-bit labels go to highdicom as they are (no copy); other values/dtypes are mapped to
    1..N; a value without a segment is named, on both paths; each segment says whether it has a voxel."""
    labels = np.zeros((3, 4, 5), np.uint8)
    labels[0, 1, 1], labels[2, 3, 4] = 1, 2
    numbers, present = dicomseg.segment_numbers(labels, [1, 2, 3])
    assert np.shares_memory(numbers, labels) and numbers.dtype == np.uint8 and present == [True, True, False]
    mask = labels == 1
    numbers, present = dicomseg.segment_numbers(mask, [1])
    assert np.array_equal(numbers, mask) and present == [True]
    assert dicomseg.segment_numbers(np.zeros((2, 2, 2), np.uint8), [1])[1] == [False]
    sparse = labels.astype(np.int16) * 3  # values 3 and 6
    numbers, present = dicomseg.segment_numbers(sparse, [3, 6])
    assert np.array_equal(numbers, labels) and numbers.dtype == np.uint8 and present == [True, True]
    with pytest.raises(InputError, match=r"label values \[2\]"):
        dicomseg.segment_numbers(labels, [1])
    with pytest.raises(InputError, match=r"label values \[6\]"):
        dicomseg.segment_numbers(sparse, [3])


def test_sparse_label_values_round_trip(tmp_path):
    """Label values 3 and 7 (int16): segments 1 and 2 in the SEG, in value order, read back voxel-equal."""
    volume = _series(tmp_path / "ct", OBLIQUE)
    labels = _labels(volume.shape_kji)
    values = np.array([0, 3, 7], np.int16)[labels]
    segments = {3: LUNGS[1], 7: LUNGS[2]}
    path = dicomseg.write_dicom_seg(values, volume.geometry, segments, volume.metadata["files"], tmp_path / "s.seg.dcm")
    back, info = dicomseg.read_dicom_seg(path, volume.geometry, volume.shape_kji)
    assert np.array_equal(back, labels)
    assert [info[1]["label"], info[2]["label"]] == ["Right lung", "Left lung"]


def test_garbage_collector_paused_only_while_writing(tmp_path):
    """write_dicom_seg pauses the cyclic collector and gives it back as it found it, on errors too."""
    import gc

    volume = _series(tmp_path / "ct", Geometry((0.5, 0.5, 5.0)), shape=(3, 8, 8))
    seen = []
    original = dicomseg.match_sources

    def spy(*args, **kwargs):
        seen.append(gc.isenabled())
        return original(*args, **kwargs)

    labels = np.zeros(volume.shape_kji, np.uint8)
    labels[1, 2:4, 2:4] = 1
    try:
        dicomseg.match_sources = spy
        assert gc.isenabled()
        dicomseg.write_dicom_seg(labels, volume.geometry, LUNGS, volume.metadata["files"], tmp_path / "a.seg.dcm")
        assert seen == [False] and gc.isenabled()
        with pytest.raises(InputError):
            dicomseg.write_dicom_seg(labels, volume.geometry, LUNGS, [tmp_path / "missing.dcm"], tmp_path / "b.seg.dcm")
        assert gc.isenabled()
        gc.disable()
        dicomseg.write_dicom_seg(labels, volume.geometry, LUNGS, volume.metadata["files"], tmp_path / "c.seg.dcm")
        assert not gc.isenabled() and seen == [False, False]
    finally:
        gc.enable()
        dicomseg.match_sources = original


def test_bad_inputs_one_clear_line(tmp_path):
    volume = _series(tmp_path / "ct", Geometry((0.5, 0.5, 5.0)), shape=(3, 8, 8))
    files = volume.metadata["files"]
    with pytest.raises(InputError, match=r"label values \[3\]"):
        dicomseg.write_dicom_seg(np.full(volume.shape_kji, 3, np.uint8), volume.geometry, LUNGS, files,
                                 tmp_path / "a.seg.dcm")
    (tmp_path / "notdicom.dcm").write_text("hello")
    with pytest.raises(InputError, match="notdicom.dcm"):
        dicomseg.write_dicom_seg(np.zeros(volume.shape_kji, np.uint8), volume.geometry, LUNGS,
                                 [tmp_path / "notdicom.dcm"], tmp_path / "b.seg.dcm")
    other = _series(tmp_path / "other", Geometry((0.5, 0.5, 5.0)), shape=(3, 8, 8))
    with pytest.raises(InputError, match="SeriesInstanceUID"):
        dicomseg.write_dicom_seg(np.zeros(volume.shape_kji, np.uint8), volume.geometry, LUNGS,
                                 [*files, other.metadata["files"][0]], tmp_path / "c.seg.dcm")
    assert not list(tmp_path.glob("*.seg.dcm"))


# ------------------------------------------------------------------------------------------------ terminology
def test_every_task_segment_has_a_term():
    """The segment names the tasks write all have SNOMED terms (a new segment name fails here)."""
    from ICHDetectorLib.logic import SUSPECTED_SEGMENTS
    from LGGSegmenterLib.logic import SEGMENT
    from LungSurvivalLib.lobes import LOBES
    from LungSurvivalLib.preprocess import LUNG_SEGMENTS

    for spec in (SUSPECTED_SEGMENTS, SEGMENT, LUNG_SEGMENTS):
        for name, _ in spec.values():
            assert terminology.term_for(name) is not None, name
    for _, name, _ in LOBES.values():
        assert terminology.term_for(name) is not None, name
    assert terminology.term_for("Right middle lobe").type.value == "72481006"
    assert terminology.term_for("Left upper lobe").type_modifier == terminology.LEFT
    assert terminology.term_for(" Right  LUNG ") == terminology.TERMS["right_lung"]
    assert terminology.term_for("spleen") is None


def test_terminology_entry_format_round_trip():
    """Slicer's serialisation: 7 '~' fields, codes 'scheme^value^meaning', the default string shape."""
    for key, term in terminology.TERMS.items():
        entry = terminology.slicer_terminology_entry(term)
        parsed = terminology.parse_slicer_terminology_entry(entry)
        assert parsed["type"] == term.type and parsed["category"] == term.category, key
        assert parsed["type_modifier"] == term.type_modifier and parsed["region"] == term.region, key
    entry = terminology.slicer_terminology_entry(terminology.TISSUE)
    assert entry == ("Segmentation category and type - 3D Slicer General Anatomy list~SCT^85756007^Tissue~"
                     "SCT^85756007^Tissue~^^~Anatomic codes - DICOM master list~^^~^^")  # vtkSegment's default
    with pytest.raises(ValueError):
        terminology.parse_slicer_terminology_entry("a~b")
    tags = terminology.segment_tags("Left lung")
    assert tags.startswith("TerminologyEntry:") and tags.endswith("|") and "SCT^7771000^Left" in tags
    assert terminology.segment_tags("spleen") == "|"


def test_seg_nrrd_terminology_read_back_by_slicer(tmp_path, headless_scene):
    """Terminology set on the node and patched into a written .seg.nrrd header both come back through
    slicer-core's segmentation storage node; the voxels are unchanged."""
    from MedDLLib import io, nodes
    from MedDLLib.headless import module_logic

    volume = Volume(np.zeros((5, 12, 14), np.int16), OBLIQUE)
    reference = nodes.add_scalar_volume(headless_scene, volume, "ref")
    labels = _labels(volume.shape_kji)
    segments = {**LUNGS, 3: ("spleen", (0.1, 0.1, 0.1))}
    labels[0, 0, 0] = 3
    seg = nodes.add_segmentation(headless_scene, labels, segments, reference, "lungs")
    assert "39607008" in seg.GetSegmentation().GetSegment("Left lung").GetTerminology()  # set by add_segmentation
    for index in range(seg.GetSegmentation().GetNumberOfSegments()):  # back to Slicer's default, as a plain file
        seg.GetSegmentation().GetNthSegment(index).SetTerminology(
            terminology.slicer_terminology_entry(terminology.TISSUE))
    plain = io.save_node(seg, tmp_path / "plain.seg.nrrd")  # written without MedDL's terminology
    assert terminology.apply_to_segmentation(seg) == ["spleen"]
    tagged = io.save_node(seg, tmp_path / "tagged.seg.nrrd")
    assert "TerminologyEntry:Segmentation category and type" in tagged.read_bytes()[:8000].decode("latin-1")
    assert terminology.write_seg_nrrd_terminology(plain) == ["spleen"]
    logic = module_logic(headless_scene, "Segmentations")
    for path in (tagged, plain):
        node = logic.LoadSegmentationFromFile(str(path), False, path.stem)
        segmentation = node.GetSegmentation()
        by_name = {segmentation.GetNthSegment(i).GetName(): segmentation.GetNthSegment(i)
                   for i in range(segmentation.GetNumberOfSegments())}
        parsed = terminology.parse_slicer_terminology_entry(by_name["Left lung"].GetTerminology())
        assert parsed["type"].value == "39607008" and parsed["type_modifier"].value == "7771000", path
        assert "85756007" in by_name["spleen"].GetTerminology()  # unknown name: Slicer's default Tissue
        for value, (name, _) in segments.items():
            assert np.array_equal(nodes.segment_array(node, name, reference), labels == value), (path, name)


# ------------------------------------------------------------------------------------- meddl infer / batch
@pytest.fixture(scope="module")
def ich_model(tmp_path_factory) -> Path:
    from ICHDetectorLib.model import untrained_package

    return untrained_package(tmp_path_factory.mktemp("model"), 64)


def _ich_study(folder: Path) -> Volume:
    from ICHDetectorLib import phantom

    volume, _, _ = phantom.head_ct(np.random.default_rng(5), 48, 8, ("intraparenchymal",))
    write_series(folder, volume.with_array(phantom.encode_bad_intercept(volume.array)),
                 rescale_intercept=0.0, bits_stored=12, pixel_representation=0)
    return volume


def _meddl(capsys, *args) -> tuple[int, str]:
    from MedDLLib import cli

    code = cli.main([str(a) for a in args])
    return code, capsys.readouterr().err


def test_infer_from_dicom_writes_seg_beside_seg_nrrd(tmp_path, capsys, ich_model, headless_scene):
    """meddl infer ich on a DICOM study: suspected.seg.dcm named in result.json, equal to suspected.seg.nrrd
    voxel for voxel, coded as hemorrhage in the brain, valid for dciodvfy; the .seg.nrrd carries the same
    SNOMED codes as Slicer's terminology tag."""
    import json

    from MedDLLib import outputs
    from MedDLLib.headless import module_logic

    _ich_study(tmp_path / "study")
    out = tmp_path / "out"
    code, err = _meddl(capsys, "infer", "ich", "--input", tmp_path / "study", "--model", ich_model, "--output", out)
    assert code == 0, err
    result = json.loads((out / "result.json").read_text())
    assert result["dicom_seg"] == "suspected.seg.dcm" and result["segmentation"] == "suspected.seg.nrrd"
    labels, segments = outputs.read_segmentation_labels(out / "suspected.seg.nrrd")
    back, info = dicomseg.read_dicom_seg(out / "suspected.seg.dcm", labels.geometry, labels.shape_kji)
    assert np.array_equal(back, labels.array)
    assert info[1]["label"] == "suspected hemorrhage" and info[1]["type"] == "SCT^50960005"
    assert dciodvfy_errors(out / "suspected.seg.dcm") == []
    ds = pydicom.dcmread(out / "suspected.seg.dcm")
    algorithm = ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == result["model"] and algorithm.AlgorithmVersion
    node = module_logic(headless_scene, "Segmentations").LoadSegmentationFromFile(
        str(out / "suspected.seg.nrrd"), False, "suspected")
    entry = terminology.parse_slicer_terminology_entry(node.GetSegmentation().GetNthSegment(0).GetTerminology())
    assert entry["type"].value == "50960005" and entry["region"].value == "12738006"


def test_output_format_nifti_geometry_equals_nrrd(tmp_path, capsys, ich_model):
    """--output-format nifti: heatmap.nii.gz (named in result.json), its NIfTI affine (nibabel, RAS) equals
    the NRRD's IJK-to-RAS and SimpleITK reads the same LPS geometry and voxels; the segmentation stays
    .seg.nrrd; an NRRD input gets no DICOM SEG."""
    import json

    import nibabel
    import SimpleITK as sitk

    from MedDLLib import outputs

    volume = _ich_study(tmp_path / "study")
    runs = {}
    for fmt in ("nrrd", "nifti"):
        out = tmp_path / fmt
        code, err = _meddl(capsys, "infer", "ich", "--input", tmp_path / "study", "--model", ich_model,
                           "--output", out, "--output-format", fmt)
        assert code == 0, err
        runs[fmt] = (out, json.loads((out / "result.json").read_text()))
    (nrrd_out, nrrd_result), (nii_out, nii_result) = runs["nrrd"], runs["nifti"]
    assert nrrd_result["heatmap"] == "heatmap.nrrd" and nii_result["heatmap"] == "heatmap.nii.gz"
    assert nii_result["segmentation"] == "suspected.seg.nrrd" and (nii_out / "suspected.seg.dcm").is_file()
    assert not (nii_out / "heatmap.nrrd").exists()
    nrrd = sitk.ReadImage(str(nrrd_out / "heatmap.nrrd"))
    nii = sitk.ReadImage(str(nii_out / "heatmap.nii.gz"))
    for get in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(nii, get)(), getattr(nrrd, get)(), atol=1e-5, err_msg=get)
    assert np.array_equal(sitk.GetArrayFromImage(nii), sitk.GetArrayFromImage(nrrd))
    image = nibabel.load(nii_out / "heatmap.nii.gz")
    np.testing.assert_allclose(image.affine, volume.geometry.ijk_to_ras(), atol=1e-4)  # RAS, not LPS
    assert np.array_equal(np.asarray(image.dataobj).transpose(2, 1, 0), sitk.GetArrayFromImage(nrrd))
    # An NRRD input: no DICOM source, no SEG; the format is refused by name when unknown.
    outputs.write_volume(tmp_path / "ct.nrrd", volume)
    code, err = _meddl(capsys, "infer", "ich", "--input", tmp_path / "ct.nrrd", "--model", ich_model,
                       "--output", tmp_path / "fromnrrd")
    assert code == 0, err
    assert "dicom_seg" not in json.loads((tmp_path / "fromnrrd" / "result.json").read_text())
    assert not list((tmp_path / "fromnrrd").glob("*.seg.dcm"))
    with pytest.raises(InputError, match="output format 'mha'"):
        outputs.volume_file_name("heatmap.nrrd", "mha")


def test_infer_lung_on_the_real_chest_ct_writes_a_valid_seg(tmp_path, capsys, real_data):
    """meddl infer lung on the real TCIA chest CT: lungs.seg.dcm holds both lungs (Lung + Right/Left), equal to
    lungs.seg.nrrd, every frame on a source image's position; dciodvfy finds no error."""
    import json

    from LungSurvivalLib.model import untrained_package
    from MedDLLib import outputs

    model = untrained_package(tmp_path / "model")
    out = tmp_path / "out"
    code, err = _meddl(capsys, "infer", "lung", "--input", real_data / REAL_CT, "--model", model, "--output", out)
    assert code == 0, err
    assert json.loads((out / "result.json").read_text())["dicom_seg"] == "lungs.seg.dcm"
    labels, _ = outputs.read_segmentation_labels(out / "lungs.seg.nrrd")
    back, info = dicomseg.read_dicom_seg(out / "lungs.seg.dcm", labels.geometry, labels.shape_kji)
    assert np.array_equal(back, labels.array) and (back == 1).sum() > 10_000 and (back == 2).sum() > 10_000
    assert [(i["label"], i["type"], i["modifier"]) for i in info.values()] == [
        ("Right lung", "SCT^39607008", "SCT^24028007"), ("Left lung", "SCT^39607008", "SCT^7771000")]
    files = sorted((real_data / REAL_CT).iterdir())
    positions = {tuple(np.round([float(v) for v in pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient],
                                3)) for f in files if f.suffix.lower() == ".dcm"}
    assert {tuple(np.round(p, 3)) for p in _frame_positions(out / "lungs.seg.dcm")} <= positions
    assert dciodvfy_errors(out / "lungs.seg.dcm") == []


def test_nrrd_input_with_dicom_source_gets_a_seg(tmp_path, capsys, ich_model):
    """The widget's child runs on an NRRD saved from a DICOM-loaded node: --dicom-source (one file of the
    series) makes it write the DICOM SEG of that series, equal to the .seg.nrrd; a bad source is one line."""
    import json

    from MedDLLib import outputs

    volume = _ich_study(tmp_path / "study")
    read = dicom.read_dicom_folder(tmp_path / "study", fix_bad_intercept=True)
    outputs.write_volume(tmp_path / "ct.nrrd", read)
    one_file = sorted((tmp_path / "study").iterdir())[3]
    out = tmp_path / "out"
    code, err = _meddl(capsys, "infer", "ich", "--input", tmp_path / "ct.nrrd", "--model", ich_model,
                       "--output", out, "--dicom-source", one_file)
    assert code == 0, err
    assert json.loads((out / "result.json").read_text())["dicom_seg"] == "suspected.seg.dcm"
    labels, _ = outputs.read_segmentation_labels(out / "suspected.seg.nrrd")
    assert labels.geometry.allclose(volume.geometry, 1e-3)
    back, _ = dicomseg.read_dicom_seg(out / "suspected.seg.dcm", labels.geometry, labels.shape_kji)
    assert np.array_equal(back, labels.array)
    referenced = {i.ReferencedSOPInstanceUID
                  for i in pydicom.dcmread(out / "suspected.seg.dcm").ReferencedSeriesSequence[0]
                  .ReferencedInstanceSequence}
    assert referenced == {pydicom.dcmread(f).SOPInstanceUID for f in read.metadata["files"]}
    code, err = _meddl(capsys, "infer", "ich", "--input", tmp_path / "ct.nrrd", "--model", ich_model,
                       "--output", tmp_path / "bad", "--dicom-source", tmp_path / "ct.nrrd")
    assert code != 0 and "ct.nrrd" in err and "--dicom-source" in err and "Traceback" not in err
    assert not (tmp_path / "bad" / "result.json").exists()
