"""No task holds more than two full-volume float32 copies of its input at once (issue 20).

Each task's :meth:`~MedDLLib.pipeline.PipelineTask.compute` (the whole computation between reading the study and
writing the files: checks, preprocessing, network, Grad-CAM, the arrays of the outputs) runs on a phantom study of
realistic in-plane size (CT 512 x 512, MR 256 x 256) under :mod:`tracemalloc`, which sees every numpy array
(numpy reports its data buffers to it). The peak of what compute allocates on top of the study already in memory
must stay within

    2 x F + masks + network,    F = the input's voxels (all series) x 4 bytes (one float32 copy of it),

with ``masks`` = :data:`MASK_VOLUMES` one-byte full volumes of the input (bool/uint8 masks and labels) and
``network`` = :data:`NETWORK_MB` for the network's input and output arrays. A third float32 copy (F more) does
not fit: the allowance is smaller than F for every case (asserted). torch's own tensors are not traced
(its CPU allocator does not report to tracemalloc): a full-volume torch copy is not caught here.
"""

from __future__ import annotations

import dataclasses
import gc
import tracemalloc
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

#: One-byte full volumes (masks, labels) compute may hold besides the two float32 copies.
MASK_VOLUMES = 2
#: Network input and output arrays (crops and stacks resized to the network's size), MB.
NETWORK_MB = 8.0
#: Probability threshold of the LGG test model (seeded random weights): a tumour of about 5 % of the head.
LGG_THRESHOLD = 0.6


@dataclasses.dataclass
class Case:
    """One task's study and model for the measurement."""

    task: Any
    study: Any
    model: Any
    options: Any

    @property
    def input_voxels(self) -> int:
        return sum(int(np.asarray(v.array).size) for v in self.study.volumes.values())

    @property
    def input_bytes(self) -> int:
        return sum(int(np.asarray(v.array).nbytes) for v in self.study.volumes.values())


def _options(task: Any) -> Any:
    """The task's default options on the CPU, with Grad-CAM on where it is an option (the most arrays)."""
    options = task.options_type(device="cpu")
    if hasattr(options, "gradcam"):
        options.gradcam = True
    return options


def _loaded(task: Any, package: Path) -> Any:
    from MedDLLib.pipeline import load_model

    return load_model(task, package, "cpu")


def _ich(root: Path) -> Case:
    from ICHDetectorLib import phantom
    from ICHDetectorLib.model import untrained_package
    from MedDLLib.pipeline import Study
    from MedDLLib.taskregistry import get_task

    volume, _, _ = phantom.head_ct(np.random.default_rng(5), 512, 40, ("intraparenchymal",))
    volume = volume.with_array(np.round(volume.array).astype(np.int16))  # as the DICOM reader gives a head CT
    task = get_task("ich")
    return Case(task, Study({"head CT": volume}, "head CT"), _loaded(task, untrained_package(root, 64)),
                _options(task))


def _lung(root: Path) -> Case:
    from LungSurvivalLib import phantom
    from LungSurvivalLib.model import untrained_package
    from LungSurvivalLib.preprocess import compact_hu
    from MedDLLib.pipeline import Study
    from MedDLLib.taskregistry import get_task

    volume, _, _ = phantom.chest_ct(np.random.default_rng(3), 512, 24)
    volume = compact_hu(volume.with_array(np.round(volume.array).astype(np.int32)))  # as LungTask.read_study
    task = get_task("lung")
    return Case(task, Study({"CT": volume}, "CT"), _loaded(task, untrained_package(root)), _options(task))


def _lgg(root: Path) -> Case:
    from LGGSegmenterLib import dataset, model
    from LGGSegmenterLib.logic import reference_channel
    from LGGSegmenterLib.phantom import LGGPhantomGenerator
    from MedDLLib.geometry import Volume
    from MedDLLib.pipeline import Study
    from MedDLLib.taskregistry import get_task

    from pipeline_cases import lgg_untrained_package

    image, _ = LGGPhantomGenerator(256, 88).make_case(np.random.default_rng(4))  # (K, C, J, I) uint8, as the tifs
    geometry = dataset.nominal_geometry((image.shape[0], image.shape[2], image.shape[3]))
    task = get_task("lgg")
    loaded = _loaded(task, lgg_untrained_package(root))
    # the random network finds "tumour" in 30 % of the head at 0.5; at 0.6 in about 5 %, a large but real tumour's
    # share (the tumour features' arrays grow with the tumour, 120 bytes per tumour voxel, not with the input)
    loaded.metadata["postprocessing"]["threshold"] = LGG_THRESHOLD
    channels = model.channel_names(loaded.metadata)
    volumes = {c: Volume(image[:, dataset.CHANNELS.index(c)].astype(np.float32), geometry, {"name": c})
               for c in channels}  # as LGGSegmenterLib.logic.read_study reads a kaggle_3m folder
    return Case(task, Study(volumes, reference_channel(channels)), loaded, _options(task))


def _glioma(root: Path) -> Case:
    from GliomaClassifierLib import phantom
    from GliomaClassifierLib.model import untrained_package
    from GliomaClassifierLib.preprocess import InputSpec
    from MedDLLib.pipeline import Study
    from MedDLLib.taskregistry import get_task

    volumes, _, _ = phantom.brain_mri(np.random.default_rng(2), 256, 64, label=1)
    task = get_task("glioma")
    loaded = _loaded(task, untrained_package(root / "glioma", size=32, depth=16, sequences=phantom.SEQUENCES))
    sequences = list(InputSpec.from_metadata(loaded.metadata["input"]).sequences)
    study = Study({s: volumes[s].with_array(np.round(volumes[s].array).astype(np.uint16)) for s in sequences},
                  sequences[0])  # DICOM MR: unsigned 16-bit
    return Case(task, study, loaded, _options(task))


BUILDERS: dict[str, Callable[[Path], Case]] = {"ich": _ich, "lung": _lung, "lgg": _lgg, "glioma": _glioma}


def traced_peak_bytes(run: Callable[[], Any]) -> tuple[int, Any]:
    """``(peak bytes allocated by run() on top of what was alive before it, run's result)``, by tracemalloc."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        result = run()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak - before, result


def allowed_bytes(case: Case) -> tuple[int, int]:
    """``(bound on compute's peak allocation, one float32 copy F)`` for ``case`` (see the module docstring)."""
    voxels = case.input_voxels
    float32_copy = 4 * voxels
    allowance = MASK_VOLUMES * voxels + int(NETWORK_MB * 2**20)
    return 2 * float32_copy + allowance, float32_copy


@pytest.mark.parametrize("name", list(BUILDERS))
def test_compute_holds_at_most_two_float32_copies_of_the_input(name, tmp_path):
    case = BUILDERS[name](tmp_path)
    bound, float32_copy = allowed_bytes(case)
    assert bound - 2 * float32_copy < float32_copy, "the allowance must not hide a third float32 copy"
    peak, computed = traced_peak_bytes(lambda: case.task.compute(case.study, case.model, case.options))
    assert computed.result  # the computation ran to its end
    mb = 2.0**20
    print(f"{name}: input {case.input_bytes / mb:.1f} MB ({case.input_voxels} voxels), compute peak "
          f"{peak / mb:.1f} MB = {peak / float32_copy:.2f} float32 copies; bound {bound / mb:.1f} MB")
    assert peak <= bound, (f"{name}: compute allocated {peak / mb:.1f} MB at its peak, "
                           f"{peak / float32_copy:.2f} float32 copies of the input ({float32_copy / mb:.1f} MB "
                           f"each); at most 2 plus {MASK_VOLUMES} one-byte masks and {NETWORK_MB:g} MB for the "
                           f"network ({bound / mb:.1f} MB)")


def test_the_measure_sees_a_third_float32_copy():
    """The measurement catches what it is for: three float32 copies of a volume exceed the bound."""
    from MedDLLib.geometry import Geometry, Volume
    from MedDLLib.pipeline import Study

    volume = Volume(np.zeros((64, 512, 512), np.int16), Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0)))
    case = Case(None, Study({"CT": volume}, "CT"), None, None)
    bound, _ = allowed_bytes(case)

    def copies(n: int) -> Callable[[], list[np.ndarray]]:
        return lambda: [np.array(volume.array, dtype=np.float32) for _ in range(n)]

    assert traced_peak_bytes(copies(2))[0] <= bound
    assert traced_peak_bytes(copies(3))[0] > bound


# ---------------------------------------------------------------------------------------------- lean helpers
def test_lean_lung_helpers_give_the_straightforward_values():
    """The memory-lean pieces of the lung segmentation equal the plain numpy/scipy calls they replace."""
    from scipy import ndimage

    from LungSurvivalLib.preprocess import _block_expand, _block_mean, _distance_mm, clean_hu, label_sizes

    rng = np.random.default_rng(0)
    mask = ndimage.binary_opening(rng.random((13, 48, 41)) > 0.3)
    labels, n = ndimage.label(mask)
    assert np.array_equal(label_sizes(labels, n, chunk=1000), np.bincount(labels.ravel(), minlength=n + 1))
    for sampling in ((2.0, 0.7, 0.7), (1.0, 1.0, 1.0)):
        assert np.array_equal(_distance_mm(mask, sampling, chunk=3), ndimage.distance_transform_edt(mask, sampling))
    hu = clean_hu(rng.integers(-3024, 3071, size=(9, 37, 35)).astype(np.int16))
    for factors in ((1, 2, 2), (2, 3, 3)):
        coarse = _block_mean(hu, factors)
        assert np.array_equal(_block_mean(hu, factors, integer_values=True), coarse)
        expanded = coarse
        for axis, f in enumerate(factors):
            expanded = np.repeat(expanded, f, axis=axis)
        assert np.array_equal(_block_expand(coarse, factors, hu.shape), expanded[:9, :37, :35])


def test_compact_hu_changes_the_type_never_a_value():
    from LungSurvivalLib.preprocess import compact_hu
    from MedDLLib.geometry import Volume

    hu = np.array([[[-1024, 0, 3071]]], dtype=np.int32)
    compact = compact_hu(Volume(hu, None, {"modality": "CT"}))
    assert compact.array.dtype == np.int16 and np.array_equal(compact.array, hu)
    assert compact.metadata == {"modality": "CT"}
    wide = Volume(np.array([[[-1024, 40000]]], dtype=np.int32), None, {})
    assert compact_hu(wide) is wide  # a value beyond int16: kept as it is
    floats = Volume(np.array([[[-1000.5]]], dtype=np.float32), None, {})
    assert compact_hu(floats) is floats
