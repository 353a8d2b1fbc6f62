"""The options of ``meddl infer glioma``/``batch`` and of the Glioma Classifier widget, declared once (light).

The command line, the widget's parameter node and its child command are derived from :data:`INFER`; see
:mod:`MedDLLib.options`. (``--voi-dicom``, infer only and repeatable, is not a widget option: the widget finds
the DICOM files of its nodes itself.)
"""

from __future__ import annotations

from MedDLLib.options import Option

THRESHOLD = Option("threshold", float, 0.5, "probability at or above which the result reads 'methylated'",
                   range=(0.01, 0.99))

#: An imported MONAI ``brats_mri_segmentation`` bundle (empty: none): the tumour regions become a segmentation
#: output and the classifier's window is centred on the tumour; see :mod:`GliomaClassifierLib.tumour`.
TUMOUR_MODEL = Option("tumour_model", str, "", "name of an imported brats_mri_segmentation bundle (meddl models "
                      "import --format monai-bundle; needs T1wCE, T1w, T2w and FLAIR): segments the tumour regions "
                      "and centres the classifier's window on the tumour; empty: none")

#: The BraTS bundle's output channels: a bundle with all three is offered as a tumour model
#: (:data:`GliomaClassifierLib.tumour.REGIONS` maps them to MedDL's region names).
TUMOUR_MODEL_OUTPUTS = ("Tumor core", "Whole tumor", "Enhancing tumor")

#: The options of ``meddl infer glioma`` and ``meddl batch glioma``.
INFER = (THRESHOLD, TUMOUR_MODEL)
