"""Qt-free logic of the ICHDetector module: intracranial hemorrhage and its subtype on head CT.

Qt-free (see ARCHITECTURE.md): runs in the Slicer application, in Slicer's headless mode and in plain CPython
with the PyPI ``slicer-core`` wheel. Never imports qt, ctk, slicer.ScriptedLoadableModule or
slicer.parameterNodeWrapper.
"""
