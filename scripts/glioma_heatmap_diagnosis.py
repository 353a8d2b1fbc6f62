"""Where the glioma model's explanation maps put their mass: the measurement behind the known heatmap gap.

Trains the ``improved`` recipe on glioma phantoms (written in the RSNA-MICCAI layout, the real training path),
then, on fresh methylated phantoms, computes for the positive logit:

* Grad-CAM at layer1..layer3 and at the improved network's ``evidence`` head (what the module shows; channel
  weights = gradient averaged over positions; :func:`MedDLLib.gradcam.compute_gradcam`),
* HiResCAM at the same layers (gradient x activation per position, summed over channels),
* gradient x input,

and reports the fraction of each map's mass inside the lesion (tumour + oedema) -- over the whole network input,
and with the map restricted to the head or to the brain -- with the share of the region the lesion covers (what
an uninformative map would give), and where the rest goes (brain, scalp/skull shell, air).

Usage (about 1 minute at the test suite's size, 48 x 48 x 24 and 96 phantoms)::

    .venv/bin/python scripts/glioma_heatmap_diagnosis.py --out glioma_heatmap.json
    .venv/bin/python scripts/glioma_heatmap_diagnosis.py --size 96 --depth 32 --cases 200 --epochs 20
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from GliomaClassifierLib import dataset, model, phantom
from GliomaClassifierLib.preprocess import InputSpec, prepare
from MedDLLib import models
from MedDLLib.geometry import Volume
from MedDLLib.gradcam import compute_gradcam, mass_inside
from MedDLLib.resample import resample_to_reference

LAYERS = ("layer1", "layer2", "layer3", "evidence")


def maps_for(network: torch.nn.Module, x: torch.Tensor) -> dict[str, np.ndarray]:
    """Explanation maps ``{name: (D, H, W)}`` of the positive logit of ``network`` for one input ``(1, C, D, H, W)``."""
    activations: dict[str, torch.Tensor] = {}
    handles = []
    for name in LAYERS:
        def keep(module, inputs, output, name=name):
            output.retain_grad()
            activations[name] = output
        handles.append(getattr(network, name).register_forward_hook(keep))
    x = x.clone().requires_grad_(True)
    try:
        network.zero_grad()
        network(x)[0, 0].backward()
    finally:
        for handle in handles:
            handle.remove()

    def upsample(m: torch.Tensor) -> np.ndarray:
        return torch.nn.functional.interpolate(m[None, None], size=x.shape[2:], mode="trilinear")[0, 0].detach().numpy()

    out = {"gradient_x_input": (x.grad[0] * x[0]).sum(0).clamp(min=0).detach().numpy()}
    for name, a in activations.items():
        out[f"gradcam_{name}"] = compute_gradcam(network, x.detach(), name, class_index=0)[0]  # what the module shows
        out[f"hirescam_{name}"] = upsample((a.grad[0] * a[0].detach()).sum(0).clamp(min=0))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--depth", type=int, default=24)
    parser.add_argument("--cases", type=int, default=96, help="training phantoms")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--widen-factor", type=float, default=0.25)
    parser.add_argument("--explain", type=int, default=8, help="fresh methylated phantoms to explain")
    parser.add_argument("--work", type=Path, default=None, help="folder for phantoms and model (default: temporary)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    a = parser.parse_args()
    if a.work:
        report = measure(a.work, a)
    else:
        with tempfile.TemporaryDirectory(prefix="glioma_heatmap_") as tmp:
            report = measure(Path(tmp), a)
    print(f"input {a.size} x {a.size} x {a.depth}, {a.cases} phantoms x {a.epochs} epochs; "
          f"mean over {a.explain} methylated phantoms; lesion share (whole / head / brain): "
          + " / ".join(f"{v:.3f}" for v in report["lesion_share"].values()))
    columns = list(next(iter(report["maps"].values())))
    print(f"{'map':22s}" + "".join(f"{c:>24s}" for c in columns))
    for name, row in report["maps"].items():
        print(f"{name:22s}" + "".join(f"{v:24.3f}" for v in row.values()))
    if a.out:
        a.out.write_text(json.dumps(report, indent=2))


def measure(work: Path, a: argparse.Namespace) -> dict:
    """Train in ``work`` and measure (the JSON report: lesion shares and, per map, its mass fractions)."""
    torch.manual_seed(0)
    phantom.write_dataset(work / "train", a.cases, seed=0, size=a.size, n_slices=a.depth, sequences=("T1wCE",))
    cases = dataset.scan_dataset(work / "train").cases
    result = model.train_model(cases, work / "improved", "improved", cache_dir=work / "cache", size=a.size,
                               depth=a.depth, widen_factor=a.widen_factor, lr=1e-3, batch_size=8, epochs=a.epochs,
                               seed=0, progress=False)
    network, package = models.load_task_model(work / "improved", model.TASK, "cpu")
    network.eval()
    spec = InputSpec.from_metadata(package.metadata["input"])

    per_map: dict[str, list[list[float]]] = {}
    shares = []
    for seed in range(a.explain):
        volumes, masks, _ = phantom.brain_mri(np.random.default_rng(500 + seed), a.size, a.depth, label=1)
        prepared = prepare({"T1wCE": volumes["T1wCE"]}, spec)
        grid = Volume(prepared.array[0], prepared.grid, {})

        def on_grid(mask: np.ndarray) -> np.ndarray:
            moved = resample_to_reference(Volume(mask.astype(np.float32), volumes["T1wCE"].geometry, {}), grid,
                                          default_value=0.0)
            return moved.array > 0.5

        lesion, brain = on_grid(masks["lesion"]), on_grid(masks["brain"])
        # the head: each slice's foreground (as the preprocessing's brain-area rule sees it), holes filled
        head = np.stack([ndimage.binary_fill_holes(s > spec.brain_threshold) for s in prepared.array[0]]) | brain
        regions = {"brain_not_lesion": brain & ~lesion, "scalp_skull": head & ~brain, "air": ~head}
        shares.append([lesion.mean(), lesion.sum() / head.sum(), lesion.sum() / brain.sum(), head.mean()])
        for name, m in maps_for(network, torch.from_numpy(prepared.array[None])).items():
            row = [mass_inside(m, lesion), mass_inside(m * head, lesion), mass_inside(m * brain, lesion)]
            per_map.setdefault(name, []).append(row + [mass_inside(m, region) for region in regions.values()])

    columns = ["lesion", "lesion_of_head_masked", "lesion_of_brain_masked", *regions]
    mean_shares = np.mean(shares, axis=0)
    return {"size": a.size, "depth": a.depth, "training_cases": a.cases, "epochs": a.epochs,
            "validation_auroc": round(float(result.best_metrics["auroc"]), 4),
            "lesion_share": dict(zip(("of_input", "of_head", "of_brain"), mean_shares[:3].round(4).tolist())),
            "head_share_of_input": round(float(mean_shares[3]), 4),
            "maps": {name: dict(zip(columns, np.mean(rows, axis=0).round(4).tolist()))
                     for name, rows in per_map.items()}}


if __name__ == "__main__":
    main()
