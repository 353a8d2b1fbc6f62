"""MedDLLib: the Qt-free shared library of the MedDL Slicer extension.

Layers (see ARCHITECTURE.md): plain data (:mod:`.geometry`), readers and image operations (:mod:`.dicom`,
:mod:`.intensity`, :mod:`.resample`), MRML adapters at the edge (:mod:`.nodes`, :mod:`.io`,
:mod:`.headless`), models and training infrastructure, and the ``meddl`` command (:mod:`.cli`).
Nothing here imports Qt; heavy dependencies (torch, slicer) are imported by the modules that need them.
"""

__version__ = "0.1.0"
