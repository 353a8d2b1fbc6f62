"""The options of ``meddl infer ich``/``batch`` and of the ICH Detector widget, declared once (light: no numpy).

The command line (:meth:`ICHDetectorLib.cli.ICHTask.add_arguments`), the widget's parameter node (``ICHDetector.py``)
and its child command (:func:`ICHDetectorLib.widgetlogic.infer_arguments`) are derived from :data:`INFER`; see
:mod:`MedDLLib.options`.
"""

from __future__ import annotations

from MedDLLib.options import Option

#: Labels Grad-CAM can explain, "any" first (``ICHDetectorLib.dataset.LABELS``; a test keeps them equal).
HEATMAP_LABELS = ("any", "epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural")

HEATMAP_LABEL = Option("heatmap_label", str, "any", "label explained by the Grad-CAM heatmap", choices=HEATMAP_LABELS)
THRESHOLD = Option("threshold", float, 0.5, "decision threshold on the study-level 'any' probability",
                   range=(0.01, 0.99))
ACCEPT_NON_HEAD = Option("accept_non_head", bool, False,
                         "run on a CT that does not look like a head (refused otherwise); recorded in result.json "
                         "as accepted_non_head", widget=False)

#: The options of ``meddl infer ich`` and ``meddl batch ich`` (the widget shows those with ``widget=True``).
INFER = (HEATMAP_LABEL, THRESHOLD, ACCEPT_NON_HEAD)
