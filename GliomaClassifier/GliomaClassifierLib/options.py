"""The options of ``meddl infer glioma``/``batch`` and of the Glioma Classifier widget, declared once (light).

The command line, the widget's parameter node and its child command are derived from :data:`INFER`; see
:mod:`MedDLLib.options`. (``--voi-dicom``, infer only and repeatable, is not a widget option: the widget finds
the DICOM files of its nodes itself.)
"""

from __future__ import annotations

from MedDLLib.options import Option

THRESHOLD = Option("threshold", float, 0.5, "probability at or above which the result reads 'methylated'",
                   range=(0.01, 0.99))

#: The options of ``meddl infer glioma`` and ``meddl batch glioma``.
INFER = (THRESHOLD,)
