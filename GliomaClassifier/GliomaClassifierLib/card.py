"""The glioma model card: what a package's model is, what it was trained on, its measured AUROC, and the caveat
every result carries (plain metadata in, text out; no torch)."""

from __future__ import annotations

import math
from typing import Any

from .evidence import EVIDENCE_NETWORK

#: Measured share of the improved model's heatmap mass on the lesion of methylated phantoms (model card text;
#: ``Testing/test_glioma_model.py`` checks it).
HEATMAP_LESION_MASS = "about 60 %"

#: The caveat every result carries (the model card's first line).
CAVEAT = ("Research use only, not for clinical decisions. MGMT status from MRI is close to chance on external "
          "data: the RSNA-MICCAI 2021 winner scored AUROC 0.62 (private leaderboard) and 0.56 on an external "
          "cohort (Kim et al. 2022); most of 420 models were not better than chance.")


def model_card(metadata: dict[str, Any]) -> str:
    """A short text: what the model is, what it was trained on, its measured AUROC with CI, and the caveat."""
    td = metadata.get("training_data") or {}
    inp = metadata.get("input") or {}
    lines = [f"GliomaClassifier {metadata.get('recipe', '?')} model v{metadata.get('version', '?')}: probability of "
             f"MGMT promoter methylation from {', '.join(inp.get('channels') or [])} "
             f"({inp.get('depth', '?')} x {inp.get('size', '?')} x {inp.get('size', '?')}, "
             f"{inp.get('orientation', '')}).",
             f"Trained on {td.get('kind', '?')} data: {td.get('description', '')}."]
    auroc = (metadata.get("metrics") or {}).get("auroc")
    if isinstance(auroc, dict) and auroc.get("value") is not None:
        ci = auroc.get("ci95") or [math.nan, math.nan]
        lines.append(f"Measured AUROC {auroc['value']:.2f} (95 % CI {ci[0]:.2f}-{ci[1]:.2f}; {auroc.get('how', '')}).")
    else:
        lines.append("No measured AUROC recorded for this model.")
    if td.get("kind") == "synthetic":
        lines.append("Trained on synthetic phantoms: its numbers say nothing about real patients.")
    layer = (metadata.get("output") or {}).get("gradcam_layer") or "layer2"
    if (metadata.get("network") or {}).get("name") == EVIDENCE_NETWORK:
        stride = (metadata["network"].get("args") or {}).get("output_stride", "?")
        lines.append(f"The heatmap (Grad-CAM at {layer}: where the network found evidence of methylation, in cells "
                     f"of {stride} pixels; empty when it found none) is not the tumour's outline: on phantoms "
                     f"{HEATMAP_LESION_MASS} of its mass lies on the tumour and its oedema, most of the rest in the "
                     "brain beside it.")
    else:
        lines.append(f"The heatmap (Grad-CAM at {layer}) shows where the network looked, not the tumour's outline: "
                     "on phantoms only 2-5 % of its mass falls on the tumour.")
    lines.append(CAVEAT)
    return " ".join(lines)
