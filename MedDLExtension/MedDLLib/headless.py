"""A Slicer scene for plain Python (PyPI ``slicer-core``), for tests, the ``meddl`` command and batch runs.

Inside the Slicer application the scene and module logics already exist (``slicer.mrmlScene``,
``slicer.app.applicationLogic()``); :func:`application_logic` finds them there. In plain Python,
:func:`create_scene` builds a scene with the application logic and the module logics MedDL uses (colours,
volumes, segmentations, subject hierarchy, tables, plots), registered on the application logic under the names
Slicer uses, so ``app_logic.GetModuleLogic("Volumes")`` works in both hosts.

Library code never reads ``slicer.mrmlScene``: it takes a scene (or a node and its ``GetScene()``) and, where a
module logic is needed, :func:`application_logic` of that scene.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Any

# Scenes created here -> their HeadlessScene (the application logic must outlive the scene's use).
_by_scene: "weakref.WeakValueDictionary[int, HeadlessScene]" = weakref.WeakValueDictionary()


@dataclasses.dataclass
class HeadlessScene:
    """A scene plus the logics that give it Slicer's behaviour without the application.

    Attributes:
        scene: the ``vtkMRMLScene``.
        app_logic: ``vtkSlicerApplicationLogic`` with the module logics registered by name.
        logics: module logics by Slicer module name ("Colors", "Volumes", "Segmentations", ...).
    """

    scene: Any
    app_logic: Any
    logics: dict[str, Any]

    def __hash__(self) -> int:  # allow weak references by identity
        return id(self)


def create_scene() -> HeadlessScene:
    """A new MRML scene with application logic and module logics (needs ``slicer-core`` or Slicer)."""
    import slicer
    from vtkmodules.vtkCommonCore import vtkCollection

    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    app_logic.SetSliceLogics(vtkCollection())
    app_logic.SetViewLogics(vtkCollection())
    logics: dict[str, Any] = {}
    from vtkmodules.vtkCommonCore import vtkObject

    # Without Slicer's share/ folder the colour logic logs "FindDefaultColorFiles failed: HomeDirectory is not
    # set" (harmless: the built-in tables are there; MedDL builds the file-based ones it needs, see nodes.py).
    warnings_were_on = vtkObject.GetGlobalWarningDisplay()
    vtkObject.GlobalWarningDisplayOff()
    for name, cls in (
        ("Colors", slicer.vtkSlicerColorLogic),
        ("Volumes", slicer.vtkSlicerVolumesLogic),
        ("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic),
        ("SubjectHierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic),
        ("Tables", slicer.vtkSlicerTablesLogic),
        ("Plots", slicer.vtkSlicerPlotsLogic),
        ("Markups", slicer.vtkSlicerMarkupsLogic),
    ):
        logic = cls()
        logic.SetMRMLApplicationLogic(app_logic)  # before SetMRMLScene: colours read their files there
        logic.SetMRMLScene(scene)
        app_logic.SetModuleLogic(name, logic)
        logics[name] = logic
    vtkObject.SetGlobalWarningDisplay(warnings_were_on)
    app_logic.SetColorLogic(logics["Colors"])
    headless = HeadlessScene(scene, app_logic, logics)
    _by_scene[id(scene)] = headless
    scene._meddl_headless = headless  # keep the logics alive as long as the scene object is referenced
    return headless


def application_logic(scene: Any) -> Any:
    """The application logic that serves ``scene``: ours for a headless scene, Slicer's inside the app."""
    headless = getattr(scene, "_meddl_headless", None) or _by_scene.get(id(scene))
    if headless is not None:
        return headless.app_logic
    try:  # inside the Slicer application
        import slicer

        return slicer.app.applicationLogic()
    except (ImportError, AttributeError) as exc:
        raise RuntimeError(
            "this scene has no application logic: create it with MedDLLib.headless.create_scene()"
        ) from exc


def module_logic(scene: Any, name: str) -> Any:
    """Slicer module logic ``name`` ("Volumes", "Segmentations", ...) for ``scene``."""
    logic = application_logic(scene).GetModuleLogic(name)
    if logic is None:
        raise RuntimeError(f"module logic {name!r} is not available for this scene")
    return logic
