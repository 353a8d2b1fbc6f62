"""Tumour regions from MONAI's ``brats_mri_segmentation`` bundle, and the classifier's window centred on them.

The bundle (imported with ``meddl models import --format monai-bundle <folder>``) takes the four sequences RSNA-MICCAI
studies have, in its order T1c, T1, T2, FLAIR (:data:`SEQUENCES`: T1wCE, T1w, T2w, FLAIR), co-registered at 1 mm;
its three sigmoid channels are the tumour core, whole tumour and enhancing tumour (they overlap). The sequences
are resampled onto the first one's grid (T1wCE) in patient space, the bundle is run by
:func:`MedDLLib.bundles.run_bundle`, and :class:`TumourRegions` holds the three masks on that grid with their
volumes and the whole tumour's centre. :func:`window_centre_slice` turns that centre into the slice the
classifier's depth window is centred on (instead of the slice with the most brain).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from MedDLLib.errors import InputError
from MedDLLib.geometry import Geometry, Volume

from .options import TUMOUR_MODEL_OUTPUTS

#: The bundle's default name in the model cache.
BUNDLE = "brats_mri_segmentation"
#: RSNA-MICCAI sequence for each bundle input channel, in the bundle's order (T1c, T1, T2, FLAIR).
SEQUENCES: dict[str, str] = {"T1c": "T1wCE", "T1": "T1w", "T2": "T2w", "FLAIR": "FLAIR"}
#: Bundle output channel -> region name MedDL shows.
REGIONS: dict[str, str] = dict(zip(TUMOUR_MODEL_OUTPUTS, ("tumour core", "whole tumour", "enhancing tumour")))


@dataclasses.dataclass
class TumourRegions:
    """Tumour regions on the reference sequence's grid.

    Attributes:
        masks: region name (:data:`REGIONS` values) -> ``[k, j, i]`` uint8 0/1 (regions overlap).
        geometry: the grid (the T1wCE volume's).
        volumes_ml: region name -> volume in mL.
        centre_lps_mm: centre of mass of the whole tumour in LPS mm, or None when no tumour was found.
        notes: what the bundle run did not do (e.g. BraTS label packing) or found doubtful.
    """

    masks: dict[str, np.ndarray]
    geometry: Geometry
    volumes_ml: dict[str, float]
    centre_lps_mm: tuple[float, float, float] | None
    notes: list[str]

    def labelmap(self) -> np.ndarray:
        """One label per voxel (1 whole tumour, 2 tumour core, 3 enhancing tumour: inner regions win), uint8."""
        out = np.zeros(next(iter(self.masks.values())).shape, dtype=np.uint8)
        for value, name in ((1, "whole tumour"), (2, "tumour core"), (3, "enhancing tumour")):
            if name in self.masks:
                out[self.masks[name].astype(bool)] = value
        return out


def bundle_inputs(volumes: Mapping[str, Volume]) -> list[Volume]:
    """The four sequences in the bundle's order, each resampled onto the T1wCE grid (patient space)."""
    from MedDLLib.resample import resample_to_reference

    missing = [rsna for rsna in SEQUENCES.values() if rsna not in volumes]
    if missing:
        raise InputError(f"the BraTS bundle needs {', '.join(SEQUENCES.values())}; missing {', '.join(missing)}")
    reference = volumes[SEQUENCES["T1c"]]
    out = [Volume(np.asarray(reference.array, dtype=np.float32), reference.geometry, dict(reference.metadata))]
    for rsna in list(SEQUENCES.values())[1:]:
        volume = volumes[rsna]
        same = volume.array.shape == reference.array.shape and volume.geometry.allclose(reference.geometry, 1e-3)
        out.append(out[0].with_array(np.asarray(volume.array, dtype=np.float32)) if same
                   else resample_to_reference(volume, reference))
    return out


def segment_tumour(volumes: Mapping[str, Volume], model: Any = BUNDLE, *, device: Any = "cpu",
                   roi_size: Sequence[int] | None = None,
                   progress: Callable[[float, str], None] | None = None) -> TumourRegions:
    """Tumour core, whole tumour and enhancing tumour of one study with the BraTS bundle ``model``.

    Args:
        volumes: RSNA sequence name (T1wCE, T1w, T2w, FLAIR) -> volume.
        model: the imported bundle (cache name, folder or loaded package).
        device, roi_size, progress: see :func:`MedDLLib.bundles.run_bundle`.
    """
    from MedDLLib.bundles import run_bundle

    inputs = bundle_inputs(volumes)
    out = run_bundle(model, inputs, device=device, roi_size=roi_size, progress=progress)
    missing = [name for name in REGIONS if name not in out.masks]
    if missing:
        raise InputError(f"model {model!r} has no tumour region outputs ({', '.join(missing)}); use the {BUNDLE} "
                         "bundle")
    masks = {REGIONS[name]: out.masks[name] for name in REGIONS}
    geometry = inputs[0].geometry
    voxel_ml = geometry.voxel_volume_ml()
    volumes_ml = {name: float(mask.sum() * voxel_ml) for name, mask in masks.items()}
    whole = masks["whole tumour"].astype(bool)
    centre = None
    if whole.any():
        k, j, i = np.argwhere(whole).mean(0)
        centre = tuple(float(v) for v in (geometry.ijk_to_lps() @ np.array([i, j, k, 1.0]))[:3])
    notes = list(out.notes) + ([] if whole.any() else ["the bundle found no tumour"])
    return TumourRegions(masks, geometry, volumes_ml, centre, notes)


def window_centre_slice(regions: TumourRegions, stack: Geometry, n_slices: int) -> int | None:
    """The slice of the classifier's stack (grid ``stack``, ``n_slices`` along k) nearest the tumour's centre,
    or None when no tumour was found (the caller keeps its own centre)."""
    if regions.centre_lps_mm is None:
        return None
    ijk = np.linalg.inv(stack.ijk_to_lps()) @ np.array([*regions.centre_lps_mm, 1.0])
    return int(np.clip(round(float(ijk[2])), 0, n_slices - 1))
