"""Lungs and their five lobes from MONAI's ``wholeBody_ct_segmentation`` bundle (TotalSegmentator classes).

A trained alternative to the HU-threshold lungs of :func:`LungSurvivalLib.preprocess.segment_lungs`: the bundle
(imported with ``meddl models import --format monai-bundle <folder>``) is run by :func:`MedDLLib.bundles.run_bundle`
and its five lobe labels become

- the lung labels LungSurvival uses everywhere (:data:`~LungSurvivalLib.preprocess.RIGHT_LUNG` = upper + middle +
  lower right lobes, :data:`~LungSurvivalLib.preprocess.LEFT_LUNG` = upper + lower left lobes), so the result is a
  :class:`~LungSurvivalLib.preprocess.LungSegmentation` (left/right volumes in mL) and
- a lobe labelmap (:data:`LOBES`: 1..5) with each lobe's volume in mL beside them.

The trachea (TotalSegmentator's ``trachea``) is the airway mask; the body is the CT's body mask. All arrays are
``[k, j, i]`` on the input CT's grid.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

from MedDLLib.errors import InputError
from MedDLLib.geometry import Volume

from .options import LOBE_CLASSES
from .preprocess import LEFT_LUNG, RIGHT_LUNG, LungSegmentation, body_mask, clean_hu

#: The bundle's default name in the model cache (``meddl models import --format monai-bundle`` keeps the folder name).
BUNDLE = "wholeBody_ct_segmentation"
#: Lobe label (1..5) -> (TotalSegmentator class name in the bundle, display name, lung).
LOBES: dict[int, tuple[str, str, int]] = {
    label: (cls, name, side) for label, cls, (name, side) in zip(range(1, 6), LOBE_CLASSES, (
        ("Right upper lobe", RIGHT_LUNG), ("Right middle lobe", RIGHT_LUNG), ("Right lower lobe", RIGHT_LUNG),
        ("Left upper lobe", LEFT_LUNG), ("Left lower lobe", LEFT_LUNG)))
}
AIRWAY_CLASS = "trachea"


@dataclasses.dataclass
class LobeSegmentation:
    """Lungs and lobes of one CT.

    Attributes:
        lungs: the :class:`LungSegmentation` (labels RIGHT_LUNG/LEFT_LUNG, body, airway, right_ml, left_ml, notes).
        lobes: ``[k, j, i]`` uint8 lobe labels (:data:`LOBES`), 0 elsewhere.
        lobe_ml: display name -> volume in mL, in :data:`LOBES` order.
    """

    lungs: LungSegmentation
    lobes: np.ndarray
    lobe_ml: dict[str, float]

    def volumes_row(self) -> dict[str, float]:
        """``{"Right lung mL": .., "Left lung mL": .., "<lobe> mL": ..}`` for a table beside left/right."""
        row = {"Right lung mL": self.lungs.right_ml, "Left lung mL": self.lungs.left_ml}
        row.update({f"{name} mL": ml for name, ml in self.lobe_ml.items()})
        return row


def lobes_from_labels(ct: Volume, class_of: Callable[[str], np.ndarray], notes: Sequence[str] = ()) -> LobeSegmentation:
    """Build the :class:`LobeSegmentation` from per-class masks on the CT's grid (``class_of(name) -> [k, j, i]``)."""
    lobes = np.zeros(ct.array.shape, dtype=np.uint8)
    for label, (cls, _, _) in LOBES.items():
        lobes[class_of(cls).astype(bool) & (lobes == 0)] = label
    lungs = np.zeros(ct.array.shape, dtype=np.uint8)
    for label, (_, _, side) in LOBES.items():
        lungs[lobes == label] = side
    voxel_ml = ct.geometry.voxel_volume_ml()
    lobe_ml = {name: float((lobes == label).sum() * voxel_ml) for label, (_, name, _) in LOBES.items()}
    right_ml = float((lungs == RIGHT_LUNG).sum() * voxel_ml)
    left_ml = float((lungs == LEFT_LUNG).sum() * voxel_ml)
    notes = list(notes)
    if right_ml == 0 or left_ml == 0:
        notes.append("the bundle found no " + ("right" if right_ml == 0 else "left") + " lung lobes")
    hu = clean_hu(ct.array)  # one float32 copy (clean_hu makes it, whatever the input's type)
    body = body_mask(hu, ct.geometry.spacing_mm)
    del hu
    airway = class_of(AIRWAY_CLASS).astype(bool)
    seg = LungSegmentation(labels=lungs, working_body=body, working_airway=airway, right_ml=right_ml, left_ml=left_ml,
                           notes=notes)
    return LobeSegmentation(lungs=seg, lobes=lobes, lobe_ml=lobe_ml)


def segment_lobes(ct: Volume, model: Any = BUNDLE, *, device: Any = "cpu", roi_size: Sequence[int] | None = None,
                  progress: Callable[[float, str], None] | None = None) -> LobeSegmentation:
    """Lungs and five lobes of chest CT ``ct`` (HU, ``[k, j, i]``) with the wholeBody bundle ``model``.

    Args:
        ct: the CT volume.
        model: the imported bundle (cache name, folder or loaded package).
        device: where the network runs.
        roi_size: sliding-window override (voxels), e.g. smaller on a small machine.
        progress: ``(fraction, message)`` callback.

    Raises:
        InputError: the bundle does not have the five lobe classes (another bundle).
    """
    from MedDLLib.bundles import run_bundle

    out = run_bundle(model, ct, device=device, roi_size=roi_size, progress=progress)
    names = set(out.labels.values())
    missing = [cls for cls, _, _ in LOBES.values() if cls not in names]
    if missing:
        raise InputError(f"model {model!r} has no lung lobe classes ({', '.join(missing)}); use the "
                         f"{BUNDLE} bundle")

    def class_of(name: str) -> np.ndarray:
        return out.mask(name) if name in names else np.zeros(ct.array.shape, dtype=np.uint8)

    return lobes_from_labels(ct, class_of, out.notes)
