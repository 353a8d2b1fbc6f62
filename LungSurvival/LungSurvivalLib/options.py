"""The options of ``meddl infer lung``/``batch`` and of the Lung Survival widget, declared once (light).

Lung has no task option of its own (the Grad-CAM heatmap is always written); the widget binds only the shared
``--force-cpu`` (:data:`MedDLLib.options.FORCE_CPU`). See :mod:`MedDLLib.options`.
"""

from __future__ import annotations

#: The options of ``meddl infer lung`` and ``meddl batch lung``.
INFER = ()
