"""Write ``qt_classes.json``: the properties and signals of the plain Qt classes the widget stand-ins imitate.

The table is read from Qt's own ``QMetaObject`` through PySide6, so it lists exactly what the real classes have
(a misspelt property in a ``.ui`` file or in widget code then fails in the harness as it would in Slicer)::

    python -m venv /tmp/pyside && /tmp/pyside/bin/pip install PySide6-Essentials
    /tmp/pyside/bin/python Testing/slicer_layer/make_qt_table.py

The generated JSON is committed, so the suite (and CI) does not need PySide6. CTK and qMRML classes are not in
this table: :mod:`standins` reads their ``Q_PROPERTY`` lines and signals from the headers in
``../shared/reference/slicer/widget-headers/``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

#: Qt classes the MedDL .ui files, MedDLWidgets and Slicer's Python layer use as widgets, layouts or timers.
CLASSES = (
    ("QtCore", "QObject"), ("QtCore", "QTimer"),
    ("QtWidgets", "QWidget"), ("QtWidgets", "QFrame"), ("QtWidgets", "QLabel"), ("QtWidgets", "QAbstractButton"),
    ("QtWidgets", "QPushButton"), ("QtWidgets", "QCheckBox"), ("QtWidgets", "QToolButton"),
    ("QtWidgets", "QComboBox"), ("QtWidgets", "QAbstractScrollArea"), ("QtWidgets", "QPlainTextEdit"),
    ("QtWidgets", "QTextEdit"), ("QtWidgets", "QTextBrowser"), ("QtWidgets", "QLineEdit"),
    ("QtWidgets", "QProgressBar"), ("QtWidgets", "QAbstractSpinBox"), ("QtWidgets", "QSpinBox"),
    ("QtWidgets", "QDoubleSpinBox"), ("QtWidgets", "QAbstractSlider"), ("QtWidgets", "QSlider"),
    ("QtWidgets", "QLayout"), ("QtWidgets", "QBoxLayout"), ("QtWidgets", "QVBoxLayout"),
    ("QtWidgets", "QHBoxLayout"), ("QtWidgets", "QFormLayout"), ("QtWidgets", "QGridLayout"),
)

OUT = Path(__file__).resolve().parent / "qt_classes.json"


def describe(meta) -> dict:
    """The class's own (not inherited) properties and signals from its ``QMetaObject``."""
    properties = {}
    for i in range(meta.propertyOffset(), meta.propertyCount()):
        prop = meta.property(i)
        notify = bytes(prop.notifySignal().methodSignature()).decode() if prop.hasNotifySignal() else None
        properties[prop.name()] = {"type": prop.typeName(), "writable": prop.isWritable(), "notify": notify}
    signals = [bytes(meta.method(i).methodSignature()).decode() for i in range(meta.methodOffset(), meta.methodCount())
               if meta.method(i).methodType().name == "Signal"]
    super_class = meta.superClass()
    return {"base": super_class.className() if super_class else None, "properties": properties, "signals": signals}


def main() -> int:
    import importlib

    import PySide6
    import PySide6.QtCore

    table = {"_source": f"PySide6 {PySide6.__version__} (Qt {PySide6.QtCore.qVersion()}) QMetaObject; "
                        "regenerate with Testing/slicer_layer/make_qt_table.py"}
    for module, name in CLASSES:
        table[name] = describe(getattr(importlib.import_module(f"PySide6.{module}"), name).staticMetaObject)
    OUT.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUT} ({len(CLASSES)} classes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
