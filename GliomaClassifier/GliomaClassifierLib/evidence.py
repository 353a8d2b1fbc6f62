"""The evidence network's prediction without torch: study probabilities and Grad-CAM maps from its evidence map.

:class:`GliomaClassifierLib.model.EvidenceResNet10` (the improved recipe's network) scores every cell of its
deepest layer (the evidence map, ``(N, 1, d, h, w)`` logits); the study's logit is their log-sum-exp pool. So one
forward of :meth:`~GliomaClassifierLib.model.EvidenceResNet10.evidence_map`, on whatever runtime
:mod:`MedDLLib.runtime` chose, gives both the probability and the Grad-CAM map, with numpy only: a prediction on a
recorded runtime export imports neither torch nor the network's module.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

#: The registry name of :class:`GliomaClassifierLib.model.EvidenceResNet10`.
EVIDENCE_NETWORK = "glioma.evidence_resnet10"
#: Default sharpness ``r`` of the log-sum-exp pool ``z = log(sum(exp(r * m))) / r``.
SHARPNESS = 10.0


def sharpness_of(metadata: Mapping[str, Any]) -> float:
    """The pool's sharpness of the evidence network a package's metadata describes."""
    return float(((metadata.get("network") or {}).get("args") or {}).get("sharpness", SHARPNESS))


def predict_with_evidence(network: Any, x: np.ndarray, package: Any = None, *, sharpness: float | None = None,
                          maps: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Probabilities ``(N,)`` of methylation and Grad-CAM maps ``(N, D, H, W)`` (None unless ``maps``) of inputs
    ``x (N, C, D, H, W)`` from ONE forward of the evidence map, no backward.

    Args:
        network: an ``EvidenceResNet10``, or a :class:`MedDLLib.runtime.Runner` of its ``evidence_map`` (e.g.
            :meth:`MedDLLib.pipeline.LoadedModel.runner`: it runs on a recorded export without torch).
        package: the network's model package (a network only: finds its runtime export).
        sharpness: the pool's sharpness (default: the network's own; needed with a Runner whose network is not
            built: :func:`sharpness_of` its metadata).

    Exact, not an approximation: the study logit is the log-sum-exp pool of the map (what ``forward`` computes),
    and Grad-CAM at ``evidence`` (one channel; the pool's gradient is a softmax, positive and summing to 1, so
    the channel weight is 1/cells) is the positive part of the map, upsampled and normalised
    (:func:`MedDLLib.gradcam.cam_maps`); ``Testing/test_glioma_evidence.py`` checks both against ``forward`` and
    :func:`MedDLLib.gradcam.compute_gradcam`.
    """
    from MedDLLib import runtime
    from MedDLLib.gradcam import cam_maps

    r = float(sharpness if sharpness is not None else network.sharpness)
    x = np.ascontiguousarray(x, dtype=np.float32)
    run = runtime.runner_for(network, package, agree=evidence_agree(r), forward="evidence_map")
    cells = run(x)  # (N, 1, d, h, w) logits per cell
    return evidence_probabilities(cells, r), cam_maps(cells, x.shape[2:]) if maps else None


def evidence_probabilities(cells: np.ndarray, sharpness: float) -> np.ndarray:
    """``EvidenceResNet10``'s study probabilities ``(N,)`` float64 from its evidence maps ``(N, 1, d, h, w)``:
    the sigmoid of their log-sum-exp pool."""
    m = cells.reshape(len(cells), -1).astype(np.float64) * sharpness
    top = m.max(axis=1)
    logits = (top + np.log(np.exp(m - top[:, None]).sum(axis=1))) / sharpness
    return 1.0 / (1.0 + np.exp(-logits))


def evidence_differences(reference: np.ndarray, candidate: np.ndarray, sharpness: float,
                         spatial: Sequence[int] | None = None) -> dict[str, float]:
    """How far two evidence maps ``(N, 1, d, h, w)`` lead apart: ``max_probability_difference`` of the study
    probabilities and ``max_map_difference`` of the Grad-CAM maps (positive part, normalised; upsampled to
    ``spatial``, default the cell grid)."""
    from MedDLLib.gradcam import cam_maps

    size = tuple(spatial) if spatial is not None else reference.shape[2:]
    p_ref, p_got = (evidence_probabilities(c, sharpness) for c in (reference, candidate))
    maps = np.abs(cam_maps(reference, size) - cam_maps(candidate, size))
    return {"max_probability_difference": float(np.abs(p_ref - p_got).max()),
            "max_map_difference": float(maps.max(initial=0.0))}


def evidence_agree(sharpness: float) -> Any:
    """Agreement of an evidence-map runtime with torch fp32: study probabilities within 1e-3 and maps (positive
    part, normalised, on the cell grid) within :data:`MedDLLib.gradcam.BF16_MAP_TOLERANCE`."""
    from MedDLLib.gradcam import BF16_MAP_TOLERANCE

    def agree(reference: np.ndarray, candidate: np.ndarray) -> bool:
        d = evidence_differences(reference, candidate, sharpness)
        return d["max_probability_difference"] <= 1e-3 and d["max_map_difference"] <= BF16_MAP_TOLERANCE

    return agree
