"""The options of ``meddl infer lung``/``batch`` and of the Lung Survival widget, declared once (light).

The command line, the widget's parameter node and its child command are derived from :data:`INFER`; see
:mod:`MedDLLib.options`. The Grad-CAM heatmap is always written.
"""

from __future__ import annotations

from MedDLLib.options import Option

#: An imported MONAI ``wholeBody_ct_segmentation`` bundle for the lungs and their five lobes (empty: MedDL's own
#: HU-threshold lung segmentation, no lobes); see :mod:`LungSurvivalLib.lobes`.
LOBE_MODEL = Option("lobe_model", str, "", "name of an imported wholeBody_ct_segmentation bundle (meddl models "
                    "import --format monai-bundle) that segments the lungs and their five lobes; empty: MedDL's "
                    "own lung segmentation, no lobes")

#: The wholeBody bundle's lobe classes (TotalSegmentator names), right upper/middle/lower then left upper/lower:
#: a bundle with all five is offered as a lobe model (:data:`LungSurvivalLib.lobes.LOBES` is built from them).
LOBE_CLASSES = ("lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right", "lung_upper_lobe_left",
                "lung_lower_lobe_left")

#: The options of ``meddl infer lung`` and ``meddl batch lung``.
INFER = (LOBE_MODEL,)
