"""Run by Testing/test_runtime.py in a child pytest (see there).

MedDLLib.runtime: the ONNX Runtime / OpenVINO prediction forwards agree with torch fp32 on trained phantom
models (masks Dice >= 0.995, probabilities within 1e-3), the export is cached beside the package and checksummed,
and torch takes over when the runtime packages are missing. Speed is measured by ``meddl bench``, never here."""

from __future__ import annotations

import gc
import json
import shutil
import sys
import weakref

import numpy as np
import pytest
import torch

from MedDLLib import runtime
from MedDLLib.cli import main
from MedDLLib.models import load_package

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _meddl(*args) -> None:
    assert main([str(a) for a in args]) == 0


@pytest.fixture(autouse=True)
def _auto_runtime(monkeypatch):
    monkeypatch.delenv(runtime.ENV, raising=False)


@pytest.fixture(autouse=True)
def _gradcam_trunk_in_torch(monkeypatch):
    """Grad-CAM's trunk stays in torch unless a test forces a runtime: a loaded machine could time a test
    network's few-millisecond trunk slower than a runtime's start-up and move it, and the checks of a study's
    outputs and provenance would then depend on the load."""
    from MedDLLib import gradcam

    monkeypatch.setattr(gradcam, "TRUNK_MIN_TORCH_SECONDS", float("inf"))


def _fresh(package_folder):
    """A newly loaded package and network (a new runner: nothing chosen in this process yet)."""
    package = load_package(package_folder)
    return package.network("cpu"), package


def _candidates() -> list[str]:
    found = runtime.available_backends()
    assert "onnxruntime" in found and "openvino" in found, "the runtime packages are dependencies of MedDL"
    return found


# ---------------------------------------------------------------------------------------------- trained models
@pytest.fixture(scope="module")
def lgg(tmp_path_factory):
    root = tmp_path_factory.mktemp("lgg")
    _meddl("phantom", "lgg", root / "train", "--cases", "6", "--seed", "0", "--size", "48", "--slices", "12",
           "--no-dicom")
    _meddl("phantom", "lgg", root / "test", "--cases", "3", "--seed", "1", "--size", "48", "--slices", "12",
           "--no-dicom")
    _meddl("train", "lgg", "--data", root / "train", "--out", root / "model", "--recipe", "improved", "--epochs", "6",
           "--force-cpu", "--width", "8", "--lr", "5e-3", "--batch-size", "8")
    return root


def test_lgg_masks_agree_with_torch_on_held_out_patients(lgg, monkeypatch):
    from LGGSegmenterLib import dataset
    from LGGSegmenterLib.model import case_image, channel_names, segment_study

    cases = dataset.scan_dataset(lgg / "test")
    network, package = _fresh(lgg / "model")
    images = [case_image(c, channel_names(package.metadata)) for c in cases]
    monkeypatch.setenv(runtime.ENV, "torch")
    reference = [segment_study(im, network, package.metadata, package=package) for im in images]
    assert any(r.mask.any() for r in reference), "the trained model should find some tumour"
    for backend in ["auto", *_candidates()]:
        monkeypatch.setenv(runtime.ENV, backend)
        network, package = _fresh(lgg / "model")
        for image, ref in zip(images, reference):  # the choice is made on the first batch of the first case
            seg = segment_study(image, network, package.metadata, package=package)
            assert runtime.dice(seg.mask, ref.mask) >= 0.995, backend
            assert np.abs(seg.probability - ref.probability).max() <= 0.05, backend
        if backend in ("onnxruntime", "openvino"):  # fp32 exports always agree: they must really have run
            assert runtime.runner_for(network).backend == backend
    record = json.loads((lgg / "model" / "runtime" / runtime.RECORD).read_text())
    assert record["weights_sha256"] == package.metadata["sha256"] and record["choices"]


@pytest.fixture(scope="module")
def ich(tmp_path_factory):
    root = tmp_path_factory.mktemp("ich")
    _meddl("phantom", "ich", root / "data", "--cases", "8", "--size", "32", "--slices", "8", "--seed", "0")
    _meddl("phantom", "ich", root / "test", "--cases", "3", "--size", "32", "--slices", "8", "--seed", "1")
    _meddl("train", "ich", "--data", root / "data", "--out", root / "model", "--epochs", "2",
           "--size", "32", "--force-cpu", "--batch-size", "16")
    return root


def test_ich_probabilities_agree_with_torch(ich, monkeypatch):
    from ICHDetectorLib.dataset import scan_dataset
    from ICHDetectorLib.model import load_model, predict_studies

    studies = scan_dataset(ich / "test").studies
    monkeypatch.setenv(runtime.ENV, "torch")
    network, package = load_model(ich / "model")
    reference = predict_studies(network, package, studies)
    for backend in ["auto", *_candidates()]:
        monkeypatch.setenv(runtime.ENV, backend)
        network, package = load_model(ich / "model")
        for got, ref in zip(predict_studies(network, package, studies), reference):
            assert np.abs(got - ref).max() <= 1e-3, backend
        if backend in ("onnxruntime", "openvino"):  # fp32 exports always agree: they must really have run
            assert runtime.runner_for(network).backend == backend


@pytest.fixture(scope="module")
def glioma(tmp_path_factory):
    root = tmp_path_factory.mktemp("glioma")
    _meddl("phantom", "glioma", root / "data", "--cases", "8", "--seed", "2", "--size", "24", "--slices", "12")
    _meddl("train", "glioma", "--data", root / "data", "--out", root / "model", "--recipe", "improved",
           "--size", "24", "--depth", "12", "--epochs", "2", "--widen-factor", "0.25", "--batch-size", "2")
    return root


def test_glioma_probabilities_agree_with_torch(glioma, monkeypatch):
    from GliomaClassifierLib.dataset import scan_dataset
    from GliomaClassifierLib.model import predict_cases

    cases = scan_dataset(glioma / "data").cases
    monkeypatch.setenv(runtime.ENV, "torch")
    reference = predict_cases(glioma / "model", cases)
    for backend in ["auto", *_candidates()]:
        monkeypatch.setenv(runtime.ENV, backend)
        assert np.abs(predict_cases(glioma / "model", cases) - reference).max() <= 1e-3, backend


def test_glioma_evidence_forward_agrees_with_torch_prediction_and_gradcam(glioma, monkeypatch):
    """One runtime forward of the evidence map gives the probability and the Grad-CAM of the two torch passes."""
    from GliomaClassifierLib.dataset import read_case, scan_dataset
    from GliomaClassifierLib.evidence import predict_with_evidence
    from GliomaClassifierLib.preprocess import InputSpec, prepare
    from MedDLLib.gradcam import compute_gradcam

    package = load_package(glioma / "model")
    spec = InputSpec.from_metadata(package.metadata["input"])
    x = np.stack([prepare(read_case(c, spec.sequences), spec).array for c in scan_dataset(glioma / "data").cases[:3]])
    network = package.network("cpu")
    with torch.no_grad():
        p_torch = torch.sigmoid(network(torch.from_numpy(x))).numpy().ravel()
    maps_torch = compute_gradcam(network, torch.from_numpy(x), "evidence", class_index=0, bf16=False)
    for backend in ["auto", *_candidates()]:
        monkeypatch.setenv(runtime.ENV, backend)
        network, package = _fresh(glioma / "model")
        p, maps = predict_with_evidence(network, x, package)
        assert np.abs(p - p_torch).max() <= 1e-3, backend
        assert np.abs(maps - maps_torch).max() <= 0.02, backend
        if backend != "auto":
            assert runtime.runner_for(network, forward="evidence_map").backend == backend
    assert list((glioma / "model" / "runtime").glob("evidence_map-*.onnx"))


def _infer_in_a_child(task: str, study, model, out, backend: str) -> bool:
    """``meddl infer`` in a fresh process on ``backend``; returns whether that process imported torch (its stderr
    is left in ``<out>.stderr``)."""
    import os
    import subprocess

    flag = out.parent / f"{out.name}.torch"
    code = ("import atexit, os, runpy, sys; atexit.register(lambda: open(os.environ['TORCH_FLAG'], 'w').write("
            "str('torch' in sys.modules))); sys.argv[0] = 'meddl'; "
            "runpy.run_module('MedDLLib.cli', run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", code, "infer", task, "--input", str(study), "--model", str(model),
                           "--output", str(out), "--force-cpu"],
                          env={**os.environ, runtime.ENV: backend, "TORCH_FLAG": str(flag)}, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (out.parent / f"{out.name}.stderr").write_text(done.stderr)
    return flag.read_text() == "True"


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_a_later_glioma_infer_runs_on_the_export_without_torch(glioma, tmp_path, backend):
    """The first run exports and records the choice (torch needed); the next one loads neither the weights nor
    torch, and gives the same probability and heatmap."""
    import SimpleITK as sitk

    from GliomaClassifierLib.dataset import scan_dataset

    study = next(iter(scan_dataset(glioma / "data").cases[0].folders.values())).parent
    model = tmp_path / "model"
    shutil.copytree(glioma / "model", model, ignore=shutil.ignore_patterns("runtime"))
    assert _infer_in_a_child("glioma", study, model, tmp_path / "first", backend)
    assert not _infer_in_a_child("glioma", study, model, tmp_path / "second", backend)
    first, second = (json.loads((tmp_path / run / "result.json").read_text()) for run in ("first", "second"))
    assert abs(first["probability"] - second["probability"]) <= 1e-3
    maps = [sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / run / "heatmap.nrrd"))) for run in ("first", "second")]
    assert maps[0].max() > 0 and np.abs(maps[0] - maps[1]).max() <= 0.02


def test_recorded_sessions_are_compiled_ahead_while_waiting(lgg, tmp_path, monkeypatch):
    """What a later ``meddl infer`` does while the child reads the study: the recorded choice's session (for the
    recorded batch shape) is compiled, unless told to stop; the forward then finds it ready."""
    from LGGSegmenterLib import dataset
    from LGGSegmenterLib.model import case_image, channel_names, segment_study
    from MedDLLib import pipeline
    from MedDLLib.taskregistry import get_task

    model = tmp_path / "model"
    shutil.copytree(lgg / "model", model, ignore=shutil.ignore_patterns("runtime"))
    monkeypatch.setenv(runtime.ENV, "openvino")
    case = dataset.scan_dataset(lgg / "test")[0]
    network, package = _fresh(model)
    image = case_image(case, channel_names(package.metadata))
    segment_study(image, network, package.metadata, package=package)  # the first run: export and choice
    (key, entry), = json.loads((model / "runtime" / runtime.RECORD).read_text())["choices"].items()
    assert entry["backend"] == "openvino" and entry["shape"][1:] == [int(s) for s in key.split("x")]

    pipeline._cache.clear()
    loaded = pipeline.load_model(get_task("lgg"), str(model), "cpu")
    assert loaded.warm(stop=lambda: True) == [] and not loaded.built
    assert loaded.warm() == [key] and not loaded.built  # compiled without torch's network
    run = loaded.runner()
    assert [b for b, _ in run._sessions] == ["openvino"]
    assert segment_study(image, run, package.metadata).mask.shape == (image.shape[0], *image.shape[2:])
    assert len(run._sessions) == 1 and not loaded.built  # the same session, no second compile


def test_a_later_lgg_infer_runs_on_the_export_without_torch(lgg, tmp_path):
    import SimpleITK as sitk

    from LGGSegmenterLib import dataset

    study = dataset.scan_dataset(lgg / "test")[0].folder
    model = tmp_path / "model"
    shutil.copytree(lgg / "model", model, ignore=shutil.ignore_patterns("runtime"))
    assert _infer_in_a_child("lgg", study, model, tmp_path / "first", "openvino")
    assert not _infer_in_a_child("lgg", study, model, tmp_path / "second", "openvino")
    masks = [sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / run / "tumour_label.nrrd"))) > 0
             for run in ("first", "second")]
    assert masks[0].any() and runtime.dice(masks[0], masks[1]) >= 0.995
    # each run says once what ran its forwards (stderr), and result.json keeps it with versions and precision
    openvino = runtime.describe("openvino")
    said = {run: [line for line in (tmp_path / f"{run}.stderr").read_text().splitlines()
                  if line.startswith("MedDL runtime:")] for run in ("first", "second")}
    assert len(said["first"]) == 1 and openvino in said["first"][0] and "measured now" in said["first"][0]
    assert len(said["second"]) == 1 and said["second"][0].endswith(f"{openvino} [forced by ${runtime.ENV}]")
    ran = {run: json.loads((tmp_path / run / "result.json").read_text())["runtime"] for run in ("first", "second")}
    assert openvino.startswith("OpenVINO ") and openvino.endswith(" fp32")
    # the first run's first batch measured the choice (torch's output answered it), its others ran on OpenVINO
    assert ran["first"].endswith(f"inputs: {runtime.describe('torch')}, {openvino}")
    assert ran["second"].startswith("forward of 3x") and ran["second"].endswith(f"inputs: {openvino}")


@pytest.fixture(scope="module")
def lung(tmp_path_factory):
    root = tmp_path_factory.mktemp("lung")
    _meddl("phantom", "lung", root / "data", "--cases", "8", "--seed", "3")
    _meddl("train", "lung", "--data", root / "data", "--out", root / "model", "--recipe", "improved", "--epochs",
           "2", "--size", "16", "--batch-size", "4", "--seed", "0")
    return root


def test_lung_outputs_agree_with_torch(lung, monkeypatch):
    from LungSurvivalLib.dataset import scan_dataset
    from LungSurvivalLib.model import predict_inputs, prepare_study
    from LungSurvivalLib.preprocess import InputSpec

    package = load_package(lung / "model")
    spec = InputSpec.from_metadata(package.metadata["input"])
    xs = [prepare_study(s, spec)[None] for s in scan_dataset(lung / "data").studies]
    monkeypatch.setenv(runtime.ENV, "torch")
    network, package = _fresh(lung / "model")
    reference = [predict_inputs(network, x, package=package) for x in xs]
    for backend in ["auto", *_candidates()]:
        monkeypatch.setenv(runtime.ENV, backend)
        network, package = _fresh(lung / "model")
        for x, ref in zip(xs, reference):
            assert np.abs(predict_inputs(network, x, package=package) - ref).max() <= 1e-3, backend
        if backend in ("onnxruntime", "openvino"):  # fp32 exports always agree: they must really have run
            assert runtime.runner_for(network).backend == backend


@pytest.mark.parametrize("task", ["lgg", "ich", "glioma", "lung"])
def test_evaluate_metrics_say_what_ran_the_forwards(task, lgg, ich, glioma, lung, tmp_path, monkeypatch):
    """``meddl evaluate``'s metrics carry ``runtime`` as a study's result.json does: a metric measured on ONNX
    Runtime's forwards says so, and torch's says torch."""
    data = {"lgg": lgg / "test", "ich": ich / "test", "glioma": glioma / "data", "lung": lung / "data"}[task]
    model = {"lgg": lgg, "ich": ich, "glioma": glioma, "lung": lung}[task] / "model"
    said = []
    for backend in ("onnxruntime", "onnxruntime", "torch"):  # the first forced run measures it, the second uses it
        monkeypatch.setenv(runtime.ENV, backend)
        out = tmp_path / str(len(said)) / "metrics.json"
        out.parent.mkdir()
        _meddl("evaluate", task, "--data", data, "--model", model, "--out", out, "--force-cpu")
        said.append(json.loads(out.read_text())["runtime"])
    assert all(text.startswith("forward of ") for text in said), said
    # the run that measured the forced runtime had torch answer that forward: it names both when it ran more
    assert said[0].endswith(runtime.describe("onnxruntime")) or said[0].endswith(runtime.describe("torch")), said
    assert said[1].endswith(f"inputs: {runtime.describe('onnxruntime')}"), said
    assert said[2].endswith(f"inputs: {runtime.describe('torch')}"), said


# ---------------------------------------------------------------------------------------------- cache and fallback
@pytest.fixture()
def ich_untrained(tmp_path):
    from ICHDetectorLib.model import untrained_package

    return untrained_package(tmp_path, 32)


def test_ich_with_a_heatmap_runs_one_torch_forward_whatever_the_runtime_choice(ich, tmp_path, monkeypatch):
    """ICH's Grad-CAM runs a torch forward of the whole study; its probabilities come from that fp32 forward, so
    a study with a heatmap runs one forward and no runtime session even where a runtime was chosen (here ONNX
    Runtime, recorded by an earlier prediction); without a heatmap the chosen runtime runs the prediction."""
    from ICHDetectorLib import phantom as ich_phantom
    from ICHDetectorLib.logic import ICHOptions, compute
    from ICHDetectorLib.model import load_model, predict_inputs
    from ICHDetectorLib.preprocess import InputSpec, volume_input

    from MedDLLib import pipeline
    from MedDLLib.taskregistry import get_task

    model = tmp_path / "model"
    shutil.copytree(ich / "model", model, ignore=shutil.ignore_patterns("runtime"))
    volume, _, _ = ich_phantom.head_ct(np.random.default_rng(5), 32, 8, ("intraparenchymal",))
    network, package = load_model(model)
    inputs, _ = volume_input(volume, InputSpec.from_metadata(package.metadata["input"]))
    monkeypatch.setenv(runtime.ENV, "torch")
    reference = predict_inputs(network, inputs, "sigmoid")
    monkeypatch.setenv(runtime.ENV, "onnxruntime")  # an earlier run's choice: ONNX Runtime for these inputs
    predict_inputs(load_model(model)[0], inputs, "sigmoid")
    monkeypatch.setenv(runtime.ENV, "auto")
    key = "x".join(str(n) for n in inputs.shape[1:])
    assert json.loads((model / "runtime" / runtime.RECORD).read_text())["choices"][key]["backend"] == "onnxruntime"
    for heatmap_label, ran in (("any", "Grad-CAM layer3: " + runtime.describe("torch")),
                               (None, f"forward of {key} inputs: " + runtime.describe("onnxruntime"))):
        pipeline._cache.clear()  # a later process
        loaded = pipeline.load_model(get_task("ich"), str(model), "cpu")
        result = compute(volume, loaded, ICHOptions(heatmap_label=heatmap_label))
        assert loaded.forwards_run() == ran
        assert np.abs(result.probabilities - reference).max() <= (1e-6 if heatmap_label else 1e-3)
        sessions = runtime.runner_for(loaded.network)._sessions
        assert (len(sessions) == 0) == (heatmap_label is not None)


def test_gradcam_trunk_runs_on_a_runtime_that_agrees_with_torch(ich, tmp_path, monkeypatch):
    """Grad-CAM's trunk (the layers up to the target layer, which need no gradient) on a runtime, the head in
    torch: on a trained phantom model the maps are within 0.02 and the outputs within 1e-3 of the torch fp32 pass,
    the trunk's export and choice are kept beside the package under its own name, and what ran it is said. In
    auto mode a trunk quicker in torch than ``TRUNK_MIN_TORCH_SECONDS`` (here any: see ``_gradcam_trunk_in_torch``)
    stays in torch: nothing is exported for it, and the choice is recorded."""
    from ICHDetectorLib import phantom as ich_phantom
    from ICHDetectorLib.model import load_model
    from ICHDetectorLib.preprocess import InputSpec, volume_input

    from MedDLLib import gradcam

    volume, _, _ = ich_phantom.head_ct(np.random.default_rng(7), 32, 8, ("subdural", "intraparenchymal"))
    for backend in ("onnxruntime", "openvino", "auto"):
        model = tmp_path / backend
        shutil.copytree(ich / "model", model, ignore=shutil.ignore_patterns("runtime"))
        network, package = load_model(model)
        x = torch.from_numpy(volume_input(volume, InputSpec.from_metadata(package.metadata["input"]))[0])
        monkeypatch.setenv(runtime.ENV, "torch")
        reference, logits = gradcam.compute_gradcam(network, x, "layer3", class_index=0, bf16=False,
                                                    return_logits=True)
        assert reference.max() > 0
        monkeypatch.setenv(runtime.ENV, backend)
        for run in ("first", "later"):  # the measuring call, then a later process on the recorded choice
            network, _ = load_model(model)
            maps, got = gradcam.compute_gradcam(network, x, "layer3", class_index=0, bf16=False,
                                                return_logits=True)
            assert np.abs(maps - reference).max() <= gradcam.BF16_MAP_TOLERANCE, (backend, run)
            assert np.abs(got - logits).max() <= gradcam.TRUNK_OUTPUT_TOLERANCE, (backend, run)
            said = runtime.forwards_run(network)
            key = "gradcam_trunk_layer3:" + "x".join(str(n) for n in x.shape[1:])
            recorded = json.loads((model / "runtime" / runtime.RECORD).read_text())["choices"][key]["backend"]
            if backend == "auto":
                assert recorded == "torch" and not list((model / "runtime").glob("gradcam_trunk*.onnx"))
                assert said == "Grad-CAM layer3: " + runtime.describe("torch"), said
            else:
                assert recorded == backend and (model / "runtime" / f"gradcam_trunk_layer3-{key.rpartition(':')[2]}.onnx").is_file()
                # the measuring call is answered by torch's trunk (the reference), a later one by the runtime
                ran = f"{key.replace(':', ' of ')} inputs: " + runtime.describe(backend if run == "later" else "torch")
                assert ran in said.split("; "), said
        gone = weakref.ref(network)  # its trunk's runner and head live on it: nothing else keeps it alive
        del network
        gc.collect()
        assert gone() is None
    # auto mode above the floor: the trunk is exported and the candidates tried (whichever wins; the fp32 ones
    # always agree, so they are timed)
    monkeypatch.setattr(gradcam, "TRUNK_MIN_TORCH_SECONDS", 1e-9)
    model = tmp_path / "above-the-floor"
    shutil.copytree(ich / "model", model, ignore=shutil.ignore_patterns("runtime"))
    network, _ = load_model(model)
    maps = gradcam.compute_gradcam(network, x, "layer3", class_index=0, bf16=False)
    assert np.abs(maps - reference).max() <= gradcam.BF16_MAP_TOLERANCE
    key = "gradcam_trunk_layer3:" + "x".join(str(n) for n in x.shape[1:])
    seconds = json.loads((model / "runtime" / runtime.RECORD).read_text())["choices"][key]["seconds"]
    assert {"torch", "onnxruntime", "openvino"} <= set(seconds)
    assert list((model / "runtime").glob("gradcam_trunk*.onnx"))


def test_export_is_cached_beside_the_package_and_reused_by_a_later_process(ich_untrained):
    from ICHDetectorLib.model import load_model, predict_inputs

    x = np.random.default_rng(0).random((5, 9, 32, 32), dtype=np.float32)
    network, package = load_model(ich_untrained)
    first = predict_inputs(network, x, "sigmoid")
    folder = ich_untrained / "runtime"
    record = json.loads((folder / runtime.RECORD).read_text())
    assert record["weights_sha256"] == package.metadata["sha256"]
    assert record["choices"]["9x32x32"]["backend"] in ("torch", *_candidates())
    onnx_file = folder / "model-9x32x32.onnx"
    stamp = onnx_file.stat().st_mtime_ns
    assert not [p for p in folder.iterdir() if p.name.endswith(".partial") or ".partial." in p.name]
    network, package = load_model(ich_untrained)  # as a later run: the recorded choice, no new export
    again = predict_inputs(network, x, "sigmoid")
    assert onnx_file.stat().st_mtime_ns == stamp
    assert np.abs(again - first).max() <= 1e-3


def test_a_choice_holds_on_the_machine_it_was_measured_on_only(ich_untrained, monkeypatch):
    """The record keeps the machine a choice was measured on (CPU, threads, torch and runtime versions): a later
    process on this machine uses it without measuring; the package copied to a machine with another CPU or
    another thread count measures again there, keeping the export, and records its own choice beside the other
    machines' (a folder shared by several machines: each goes straight to its own choice)."""
    from ICHDetectorLib.model import load_model, predict_inputs

    x = np.random.default_rng(7).random((3, 9, 32, 32), dtype=np.float32)
    network, package = load_model(ich_untrained)
    expected = predict_inputs(network, x, "sigmoid")
    record_file = ich_untrained / "runtime" / runtime.RECORD
    entry = json.loads(record_file.read_text())["choices"]["9x32x32"]
    assert entry["machine"] == runtime.machine() and entry["machine"]["threads"] == torch.get_num_threads()
    assert "others" not in entry
    onnx_file = ich_untrained / "runtime" / "model-9x32x32.onnx"
    stamp = onnx_file.stat().st_mtime_ns
    here = runtime.machine()

    def measured_on(machine) -> bool:
        """One later process on ``machine``: whether it measured (and its probabilities agree)."""
        monkeypatch.setattr(runtime, "machine", lambda: machine)
        network, package = load_model(ich_untrained)
        assert runtime.runner_for(network).covers()  # the weights were checked: trusted on any machine
        assert np.abs(predict_inputs(network, x, "sigmoid") - expected).max() <= 1e-3
        return "9x32x32" in runtime.runner_for(network).timings

    assert not measured_on(here)  # this machine's choice: used, not measured
    others = [{**here, "cpu": "another CPU", "cpu_flags": ["avx2"]}, {**here, "threads": 16},
              {**here, "openvino": "2024.4.0"}]
    for count, other in enumerate(others, 2):
        assert measured_on(other), other  # measured again there
        top = json.loads(record_file.read_text())["choices"]["9x32x32"]
        # the newest on top, with the keys an earlier MedDL reads there; the other machines' under "others"
        assert top["machine"] == other and {"backend", "shape", "seconds", "calls"} <= set(top)
        assert [e["machine"] for e in top["others"]] == [*others[:count - 2][::-1], here]
    for machine in (here, *others):  # machines taking turns on the shared folder: none measures again
        assert not measured_on(machine), machine
    assert onnx_file.stat().st_mtime_ns == stamp  # the export is the same on every machine
    record = json.loads(record_file.read_text())
    mine = next(e for e in record["choices"]["9x32x32"]["others"] if e["machine"] == here)
    record["choices"]["9x32x32"] = mine  # an earlier MedDL measured here and wrote its entry alone
    record_file.write_text(json.dumps(record))
    assert not measured_on(here)
    monkeypatch.setattr(runtime, "MACHINES_KEPT", 2)
    assert measured_on(others[0]) and measured_on(others[1])
    top = json.loads(record_file.read_text())["choices"]["9x32x32"]
    assert top["machine"] == others[1] and [e["machine"] for e in top["others"]] == [others[0]]  # 2 in all


def test_the_record_follows_the_batch_a_later_run_uses(ich_untrained, monkeypatch):
    """The choice is per input shape without the batch; the record also keeps the whole shape, which a later
    process compiles ahead while it reads the study (:meth:`Runner.warm`). A run with another batch (a new batch
    size, a short study) records its own, so the next process compiles the session it will use."""
    from ICHDetectorLib.model import load_model, predict_inputs

    monkeypatch.setenv(runtime.ENV, "openvino")  # a runtime, whatever this machine would choose
    rng = np.random.default_rng(8)
    record_file = ich_untrained / "runtime" / runtime.RECORD
    predict_inputs(load_model(ich_untrained)[0], rng.random((5, 9, 32, 32), dtype=np.float32), "sigmoid")
    assert json.loads(record_file.read_text())["choices"]["9x32x32"]["shape"] == [5, 9, 32, 32]
    network, _ = load_model(ich_untrained)
    predict_inputs(network, rng.random((3, 9, 32, 32), dtype=np.float32), "sigmoid")
    entry = json.loads(record_file.read_text())["choices"]["9x32x32"]
    assert entry["shape"] == [3, 9, 32, 32] and entry["backend"] == "openvino"
    network, _ = load_model(ich_untrained)
    runner = runtime.runner_for(network)
    assert runner.warm() == ["9x32x32"] and list(runner._sessions) == [("openvino", (3, 9, 32, 32))]


def test_a_damaged_or_stale_export_is_made_again(ich_untrained, monkeypatch):
    from ICHDetectorLib.model import load_model, predict_inputs

    monkeypatch.setenv(runtime.ENV, "onnxruntime")  # the export is used (auto may keep torch for so small a net)
    x = np.random.default_rng(1).random((4, 9, 32, 32), dtype=np.float32)
    network, package = load_model(ich_untrained)
    expected = predict_inputs(network, x, "sigmoid")
    onnx_file = ich_untrained / "runtime" / "model-9x32x32.onnx"
    onnx_file.write_bytes(b"not a model")  # damaged: its checksum no longer matches
    network, package = load_model(ich_untrained)
    assert np.abs(predict_inputs(network, x, "sigmoid") - expected).max() <= 1e-3
    assert onnx_file.read_bytes() != b"not a model"
    # new weights under the same folder: the record belongs to the old sha256 and is not used
    record_file = ich_untrained / "runtime" / runtime.RECORD
    record = json.loads(record_file.read_text())
    record["weights_sha256"] = "0" * 64
    record_file.write_text(json.dumps(record))
    network, package = load_model(ich_untrained)
    assert np.abs(predict_inputs(network, x, "sigmoid") - expected).max() <= 1e-3
    assert json.loads(record_file.read_text())["weights_sha256"] == package.metadata["sha256"]


def test_torch_takes_over_without_the_runtime_packages(ich_untrained, monkeypatch):
    from ICHDetectorLib.model import load_model, predict_inputs

    x = np.random.default_rng(2).random((3, 9, 32, 32), dtype=np.float32)
    network, package = load_model(ich_untrained)
    with torch.no_grad():
        expected = torch.sigmoid(network(torch.from_numpy(x))).numpy()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "openvino", None)
    assert runtime.available_backends() == []
    network, package = load_model(ich_untrained)
    got = predict_inputs(network, x, "sigmoid")
    assert np.abs(got - expected).max() <= 1e-6
    assert runtime.runner_for(network).backend == "torch"


def test_forced_torch_and_no_package_run_torch_and_write_nothing(tmp_path, monkeypatch):
    from ICHDetectorLib.model import ich_resnet2d, predict_inputs

    network = ich_resnet2d(9, 6, (8, 8, 8, 8)).eval()
    x = np.random.default_rng(3).random((2, 9, 32, 32), dtype=np.float32)
    with torch.no_grad():
        expected = torch.sigmoid(network(torch.from_numpy(x))).numpy()
    assert np.abs(predict_inputs(network, x, "sigmoid") - expected).max() <= 1e-6
    assert runtime.runner_for(network).folder is None


def test_agreement_rules():
    logits = np.array([[0.0, 3.0, -2.0]])
    assert runtime.probabilities_agree("sigmoid")(logits, logits + 1e-3)
    assert not runtime.probabilities_agree("sigmoid")(logits, logits + 0.01)
    masks = np.full((1, 1, 8, 8), -5.0)
    masks[0, 0, 2:6, 2:6] = 5.0
    assert runtime.masks_agree()(masks, masks + 0.01)
    shifted = masks.copy()
    shifted[0, 0, 2, 2:6] = -5.0
    assert not runtime.masks_agree()(masks, shifted)  # Dice 0.857
    empty = np.full((1, 1, 8, 8), -5.0)
    assert not runtime.masks_agree()(empty, empty + 4.5)  # both masks empty, but probabilities far apart
    assert runtime.dice(np.zeros(3, bool), np.zeros(3, bool)) == 1.0


def test_the_choice_weighs_a_runtime_start_up_against_the_callers_forwards(tmp_path, monkeypatch):
    """A candidate that starts in 0.3 s and runs in 5 ms loses to a 40 ms torch forward for one call and wins when
    the caller says twenty forwards of that shape follow (a study's batches); the record keeps the count."""
    import time

    class SlowStartSession:
        def __init__(self, backend, onnx_file, shape):
            time.sleep(0.3)
            self.run = lambda x: (time.sleep(0.005), reference(x))[1]

    network = torch.nn.Conv2d(1, 2, 3, padding=1).eval()
    reference = runtime.Runner(network).torch_forward
    monkeypatch.setattr(runtime, "available_backends", lambda: ["onnxruntime"])
    monkeypatch.setattr(runtime, "_Session", SlowStartSession)
    monkeypatch.setattr(runtime.Runner, "torch_forward", lambda self, x: (time.sleep(0.04), reference(x))[1])
    x = np.random.default_rng(4).random((2, 1, 8, 8), dtype=np.float32)
    chosen = {}
    for calls in (1, 20):
        runner = runtime.Runner(network, folder=tmp_path / str(calls), weights_sha256="0" * 64)
        runner(x, calls=calls)
        chosen[calls] = runner.chosen["1x8x8"]
        record = json.loads((tmp_path / str(calls) / runtime.RECORD).read_text())["choices"]["1x8x8"]
        assert record["calls"] == calls and record["backend"] == chosen[calls]
    assert chosen == {1: "torch", 20: "onnxruntime"}


def test_the_bench_times_every_agreeing_runtime_chosen_or_not(ich_untrained):
    """``bench.runtime_rows`` shows each installed runtime's warm forward (ICH's small network may stay in torch
    once start-up is counted: the row still says what ONNX Runtime and OpenVINO make of it), with its share of
    the ceiling; the table names them."""
    from ICHDetectorLib.model import load_model

    from MedDLLib import bench

    network, package = load_model(ich_untrained)
    x = np.random.default_rng(5).random((4, 9, 32, 32), dtype=np.float32)
    ceiling = {"threads": torch.get_num_threads(), "fp32_gflops": 100.0, "bf16_gflops": 200.0, "fp32_from": "a",
               "bf16_from": "b", "measurements": {}}
    row = bench.runtime_rows(network, package, x, runtime.probabilities_agree(), repeats=2, ceiling=ceiling)
    assert {"onnxruntime", "openvino"} <= set(row["candidates"])
    for name, figures in row["candidates"].items():
        assert len(figures["seconds"]) == 2 and figures["median_s"] > 0
        assert figures["achieved"]["ceiling_gflops"] == (200.0 if name == "openvino-bf16" else 100.0)
    table = bench.task_table({"runtime": {"resnet": row}, "ceiling": ceiling})
    assert "onnxruntime" in table and "openvino, warm" in table


def test_a_forced_runtime_that_does_not_agree_is_measured_once_then_torch_runs(tmp_path, monkeypatch, capsys):
    """``$MEDDL_RUNTIME`` forcing a runtime whose output disagrees with torch: the first call measures it and
    answers with torch, later calls of that shape run torch without measuring again, and the run says so once."""
    from MedDLLib import device

    monkeypatch.setattr(device, "_ANNOUNCED", set())  # said once per process: earlier tests said the same
    network = torch.nn.Conv2d(1, 2, 3, padding=1).eval()
    runner = runtime.Runner(network, folder=tmp_path, weights_sha256="0" * 64, agree=lambda reference, out: False)
    monkeypatch.setenv(runtime.ENV, "onnxruntime")
    measured = []
    choose = runtime.Runner._choose
    monkeypatch.setattr(runtime.Runner, "_choose", lambda self, *a, **k: (measured.append(1), choose(self, *a, **k))[1])
    x = np.random.default_rng(9).random((2, 1, 8, 8), dtype=np.float32)
    outs = [runner(x) for _ in range(3)]
    assert len(measured) == 1 and runner.chosen["1x8x8"] == "torch"
    assert all(np.abs(out - runner.torch_forward(x)).max() < 1e-6 for out in outs)
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("MedDL runtime:")]
    assert len(said) == 1 and runtime.describe("torch") in said[0], said


def test_each_model_says_what_runs_it_even_when_another_said_the_same(tmp_path, monkeypatch, capsys):
    """The announcement names the model: two packages of one input shape, run one after the other in one process
    (a Slicer session), each say once what runs them, though the rest of the line is the same."""
    from MedDLLib import device

    network = torch.nn.Conv2d(1, 2, 3, padding=1).eval()
    x = np.random.default_rng(10).random((2, 1, 8, 8), dtype=np.float32)
    for name in ("model-a", "model-b"):  # earlier runs: each package's choice is recorded
        runtime.Runner(network, folder=tmp_path / name, weights_sha256="0" * 64, name=name)(x)
    monkeypatch.setattr(device, "_ANNOUNCED", set())  # a new process
    capsys.readouterr()
    for name in ("model-a", "model-b", "model-a"):
        runner = runtime.Runner(network, folder=tmp_path / name, weights_sha256="0" * 64, name=name)
        runner(x)
        runner(x)
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("MedDL runtime:")]
    assert [line.split()[2] for line in said] == ["model-a", "model-b"], said
    assert all(line.endswith("[chosen by an earlier run on this machine]") for line in said), said


def test_onnxruntime_sessions_do_not_spin_after_a_run(tmp_path):
    """ONNX Runtime's threads busy-wait after a run by default; its sessions here turn that off (a spinning pool
    held one of two cores and doubled the next OpenVINO forward, the choice's next candidate)."""
    network = torch.nn.Conv2d(1, 2, 3, padding=1).eval()
    runner = runtime.Runner(network, folder=tmp_path, weights_sha256="0" * 64)
    session = runner._session("onnxruntime", (1, 1, 8, 8))
    options = session.native.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    x = np.random.default_rng(6).random((1, 1, 8, 8), dtype=np.float32)
    assert np.abs(session.run(x) - runner.torch_forward(x)).max() < 1e-5


def test_the_choice_keeps_only_the_best_candidates_session(tmp_path, monkeypatch):
    """A beaten candidate's session (and its buffers: ONNX Runtime's were 0.8 GB for LGG's batch) is released as
    soon as a faster one agrees: at most two sessions live during a choice, only the chosen one after it."""
    import time

    forward_s = {"onnxruntime": 0.02, "openvino": 0.005, "openvino-bf16": 0.01}
    alive, most = set(), []

    class CountedSession:
        def __init__(self, backend, onnx_file, shape):
            alive.add(backend)
            most.append(len(alive))
            self.backend = backend
            self.run = lambda x: (time.sleep(forward_s[backend]), reference(x))[1]

        def __del__(self):
            alive.discard(self.backend)

    network = torch.nn.Conv2d(1, 2, 3, padding=1).eval()
    reference = runtime.Runner(network).torch_forward
    monkeypatch.setattr(runtime, "available_backends", lambda: list(forward_s))
    monkeypatch.setattr(runtime, "_Session", CountedSession)
    monkeypatch.setattr(runtime.Runner, "torch_forward", lambda self, x: (time.sleep(0.06), reference(x))[1])
    runner = runtime.Runner(network, folder=tmp_path, weights_sha256="0" * 64)
    x = np.random.default_rng(7).random((2, 1, 8, 8), dtype=np.float32)
    runner(x)
    assert runner.chosen["1x8x8"] == "openvino"
    assert max(most) == 2 and alive == {"openvino"} and list(runner._sessions) == [("openvino", (2, 1, 8, 8))]
