"""A model selector for a module widget: the task's cached models, the selected one's card, Import, Open cache.

Models live in the visible cache folder of :mod:`MedDLLib.models` (``$MEDDL_HOME/models`` or
``~/.meddl/models``). Import copies a package (an unpacked folder, picked through its ``configs/metadata.json``,
or a .zip) into the cache after verifying its checksum, offline. The card text is
:func:`MedDLLib.guisupport.format_model_card` (always says "research use only").
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import qt
import slicer
from slicer.i18n import tr as _

from MedDLLib import guisupport


class ModelSelector:
    """Binds a combo box, a card view and two buttons to the model cache for one task.

    Args:
        task: the task name (``"glioma"``, ``"lgg"``, ``"lung"``, ``"ich"``); only its models are offered.
        comboBox: a ``QComboBox``; item data is the model name that ``meddl ... --model`` takes.
        cardView: a ``QPlainTextEdit``/``QTextBrowser`` (``setPlainText``) or ``QLabel`` (``text``).
        importButton: optional ``QPushButton`` opening the import dialog.
        openCacheButton: optional ``QPushButton`` showing the cache folder in the file manager.
        onChanged: optional callback with the selected model name (or None) whenever the selection changes.
    """

    def __init__(
        self,
        task: str,
        comboBox,
        cardView,
        importButton=None,
        openCacheButton=None,
        onChanged: Callable[[str | None], None] | None = None,
    ):
        self.task = task
        self.comboBox = comboBox
        self.cardView = cardView
        self.onChanged = onChanged
        self._choices: list[guisupport.ModelChoice] = []
        comboBox.connect("currentIndexChanged(int)", self._onIndexChanged)
        if importButton is not None:
            importButton.toolTip = _(
                "Add a model package (a .zip, or a package folder's configs/metadata.json) "
                "to the model cache; works offline"
            )
            importButton.connect("clicked(bool)", lambda checked=False: self.importModel())
        if openCacheButton is not None:
            openCacheButton.toolTip = _("Show the model cache folder (models can be removed there)")
            openCacheButton.connect("clicked(bool)", lambda checked=False: self.openCacheFolder())
        self.refresh()

    def refresh(self, select: str | None = None) -> None:
        """Re-read the cache; keep the current model selected (or select ``select``)."""
        from MedDLLib import models

        keep = select or self.currentModel()
        # a saved choice whose package is gone stays selected, shown as missing (Apply stays off)
        self._choices = guisupport.model_choices(models.list_models(), task=self.task, keep=select)
        wasBlocked = self.comboBox.blockSignals(True)
        try:
            self.comboBox.clear()
            for choice in self._choices:
                self.comboBox.addItem(choice.title, choice.name)
            if not self._choices:
                self.comboBox.addItem(_("No {task} model in the cache: import one").format(task=self.task), "")
            names = [c.name for c in self._choices]
            self.comboBox.setCurrentIndex(names.index(keep) if keep in names else 0)
        finally:
            self.comboBox.blockSignals(wasBlocked)
        self._onIndexChanged(self.comboBox.currentIndex)

    def currentModel(self) -> str | None:
        """The selected model's name, or None when nothing usable is selected."""
        choice = self._currentChoice()
        return choice.name if choice is not None and choice.usable else None

    def selectedName(self) -> str | None:
        """The name of the selected entry, usable or not (a saved model missing from the cache included)."""
        choice = self._currentChoice()
        return choice.name if choice is not None else None

    def importModel(self, path: str | None = None) -> str | None:
        """Import a package (asks for it when ``path`` is None); returns the new model's name, None if cancelled."""
        from MedDLLib import models

        if path is None:
            path = qt.QFileDialog.getOpenFileName(
                slicer.util.mainWindow(), _("Import a MedDL model package"), "", guisupport.IMPORT_FILE_FILTER
            )
            if not path:
                return None
        with slicer.util.tryWithErrorDisplay(_("Failed to import the model.")):
            source = guisupport.import_source(path)
            try:
                installed = models.import_model(source)
            except models.ModelError as exc:
                if "already in" not in str(exc):
                    raise
                if not slicer.util.confirmYesNoDisplay(
                    _("A model with this name is already in the cache. Replace it?"), windowTitle=_("Import model")
                ):
                    return None
                installed = models.import_model(source, overwrite=True)
            logging.info(f"Imported model {installed.name} into {installed.parent}")
            self.refresh(select=installed.name)
        return installed.name

    def openCacheFolder(self) -> None:
        """Show the model cache folder in the system's file manager."""
        from MedDLLib import models

        qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(models.cache_dir())))

    # -------------------------------------------------------------------------------------------------- private
    def _currentChoice(self) -> guisupport.ModelChoice | None:
        index = self.comboBox.currentIndex
        return self._choices[index] if 0 <= index < len(self._choices) else None

    def _onIndexChanged(self, index: int = -1) -> None:
        choice = self._currentChoice()
        if choice is None:
            text = _("No model selected. Train one with 'meddl train {task} ...' or import a model package.").format(
                task=self.task
            )
            text += "\n" + guisupport.RESEARCH_USE_ONLY
        elif not choice.usable:
            text = _("{name} cannot be used: {problem}").format(name=choice.name, problem=choice.problem)
        else:
            from MedDLLib import models

            try:
                text = guisupport.format_model_card(models.read_metadata(choice.name), name=choice.name)
            except models.ModelError as exc:
                text = _("{name} cannot be used: {problem}").format(name=choice.name, problem=exc)
        if hasattr(self.cardView, "setPlainText"):
            self.cardView.setPlainText(text)
        else:
            self.cardView.text = text
        if self.onChanged is not None:
            # a missing saved model keeps its name in the parameter node (the scene is saved as it was opened)
            missing = choice is not None and choice.problem == guisupport.MISSING_MODEL
            self.onChanged(choice.name if missing else self.currentModel())


class BundleSelector:
    """An optional helper-model combo box (e.g. the lung module's "Lobe model"): "None" first, then the imported
    MONAI bundles whose outputs include ``outputs`` (:func:`MedDLLib.guisupport.bundle_choices`), bound to the
    str option field ``field`` of the widget's parameter node (the child command gets it as that option).

    Args:
        comboBox: a ``QComboBox``; item data is the bundle's cache name ("" for none).
        outputs: output labels a bundle must have to be offered.
        field: the parameter node field (e.g. ``"lobeModel"``).
        noneText: the text of the "no bundle" entry.
    """

    def __init__(self, comboBox, outputs, field: str, noneText: str):
        self.comboBox = comboBox
        self.outputs = tuple(outputs)
        self.field = field
        self.noneText = noneText
        self.parameterNode = None
        comboBox.connect("currentIndexChanged(int)", self._onIndexChanged)
        self.refresh()

    def refresh(self, select: str | None = None) -> None:
        """Re-read the cache; select ``select`` (else keep the current choice)."""
        from MedDLLib import models

        keep = select if select is not None else self.comboBox.currentData
        choices = guisupport.bundle_choices(models.list_models(), self.outputs, keep=keep or None)
        wasBlocked = self.comboBox.blockSignals(True)
        try:
            self.comboBox.clear()
            self.comboBox.addItem(self.noneText, "")
            for choice in choices:
                self.comboBox.addItem(choice.title, choice.name)
            names = [""] + [c.name for c in choices]
            self.comboBox.setCurrentIndex(names.index(keep) if keep in names else 0)
        finally:
            self.comboBox.blockSignals(wasBlocked)

    def follow(self, parameterNode) -> None:
        """Bind to ``parameterNode`` (None: unbind) and show its choice."""
        self.parameterNode = parameterNode
        if parameterNode is not None and getattr(parameterNode, self.field) != self.comboBox.currentData:
            self.refresh(select=getattr(parameterNode, self.field))

    def _onIndexChanged(self, index: int = -1) -> None:
        if self.parameterNode is not None:
            setattr(self.parameterNode, self.field, self.comboBox.currentData or "")
