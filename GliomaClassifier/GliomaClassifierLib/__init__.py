"""Qt-free logic of the GliomaClassifier module: MGMT promoter methylation of a glioma from brain MRI.

Qt-free (see ARCHITECTURE.md): runs in the Slicer application, in Slicer's headless mode and in plain CPython
with the PyPI ``slicer-core`` wheel. Never imports qt, ctk, slicer.ScriptedLoadableModule or
slicer.parameterNodeWrapper.
"""
