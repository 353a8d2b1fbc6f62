"""The options of ``meddl infer lgg``/``batch`` and of the LGG Segmenter widget, declared once (light).

The command line, the widget's parameter node and its child command are derived from :data:`INFER`; see
:mod:`MedDLLib.options`.
"""

from __future__ import annotations

from MedDLLib.options import Option

GRADCAM = Option("gradcam", bool, False, "also write a Grad-CAM heatmap of the tumour prediction")

#: The options of ``meddl infer lgg`` and ``meddl batch lgg``.
INFER = (GRADCAM,)
