"""Stand-ins for the Qt, CTK and qMRML widget classes, with PythonQt semantics and the real classes' facts.

Only the widget classes are imitated; everything else a module touches is real (Slicer's Python layer from
``../shared/reference/slicer``, MRML from slicer-core). Each stand-in class knows exactly the properties and
signals of the class it stands for:

- plain Qt classes: ``qt_classes.json`` (Qt's own ``QMetaObject`` through PySide6; see ``make_qt_table.py``);
- CTK and qMRML classes: the ``Q_PROPERTY`` lines and ``signals:`` sections of their headers in
  ``widget-headers/`` (plus what their Qt base class has).

PythonQt semantics: a property is an attribute (``button.enabled = False``; a misspelt one raises
``AttributeError``), a writable property also has its ``setX`` slot, a signal connects by its C++ signature
(``obj.connect("clicked(bool)", fn)``; an unknown signature raises) or by name (``obj.toggled.connect(fn)``), and
extra signal arguments are dropped when the callback takes fewer. Setting a property emits its change signal as
the real widget does (``checked`` -> ``toggled(bool)``/``stateChanged(int)``, ``currentIndex`` ->
``currentIndexChanged(int)``, ``value`` -> ``valueChanged(double)``, a node combo box's current node ->
``currentNodeChanged(vtkMRMLNode*)``).

``QUiLoader.load`` builds the widget tree from the ``.ui`` XML: classes, names, properties (``stdset="0"``
ones become dynamic properties, as Qt does; any other unknown property raises), layouts and the
``<connections>`` (so ``mrmlSceneChanged(vtkMRMLScene*)`` reaches the node selectors only where the ``.ui`` says).
"""

from __future__ import annotations

import inspect
import json
import re
import time
import types
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
QT_TABLE = HERE / "qt_classes.json"

#: Header file of each CTK/qMRML class the .ui files and Slicer's Python layer use (relative to widget-headers/).
HEADERS = {
    "ctkCollapsibleButton": "CTK/Libs/Widgets/ctkCollapsibleButton.h",
    "ctkSliderWidget": "CTK/Libs/Widgets/ctkSliderWidget.h",
    "qMRMLNodeComboBox": "Slicer-v5.12.0/Libs/MRML/Widgets/qMRMLNodeComboBox.h",
    "qMRMLWidget": "Slicer-v5.12.0/Libs/MRML/Widgets/qMRMLWidget.h",
}


# ------------------------------------------------------------------------------------------------ class facts
def _normalise_signature(name: str, arguments: str) -> str:
    """``currentNodeIDChanged(const QString& id)`` -> ``currentNodeIDChanged(QString)`` (Qt's normalised form)."""
    types_ = []
    for argument in filter(None, (a.strip() for a in arguments.split(","))):
        argument = re.sub(r"\bconst\b", "", argument.split("=")[0]).replace("&", " ")
        pointer = "*" in argument
        words = argument.replace("*", " ").split()
        type_ = words[0] if len(words) == 1 else " ".join(words[:-1])  # drop the parameter's name
        types_.append(type_ + ("*" if pointer else ""))
    return f"{name}({','.join(types_)})"


def parse_header(path: Path) -> dict:
    """``{"base", "properties": {name: {"type", "writable", "notify"}}, "signals": [...]}`` of a Qt header."""
    text = path.read_text(encoding="utf-8", errors="replace")
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    name = path.stem
    base = re.search(rf"class\s+\w*\s*{name}\s*:\s*public\s+(\w+)", text).group(1)
    properties = {}
    for match in re.finditer(r"Q_PROPERTY\(([^)]*)\)", text):
        words = match.group(1).split()
        read = words.index("READ")
        notify = words[words.index("NOTIFY") + 1] if "NOTIFY" in words else None
        properties[words[read - 1]] = {"type": " ".join(words[:read - 1]), "writable": "WRITE" in words,
                                       "notify": notify}
    signals = []
    for section in re.finditer(r"(?:Q_SIGNALS|signals)\s*:(.*?)(?=\n\s*(?:public|protected|private|Q_SLOTS|"
                               r"Q_SIGNALS|signals)\b[^\n]*:|\n\};)", text, flags=re.S):
        for signal in re.finditer(r"void\s+(\w+)\s*\(([^)]*)\)\s*;", section.group(1)):
            signals.append(_normalise_signature(signal.group(1), signal.group(2)))
    for prop in properties.values():  # NOTIFY names a signal; keep its full signature
        if prop["notify"]:
            prop["notify"] = next((s for s in signals if s.startswith(prop["notify"] + "(")), None)
    return {"base": base, "properties": properties, "signals": signals}


def class_table(headers_root: Path) -> dict[str, dict]:
    """Every stand-in class's own facts: the PySide6 table plus the parsed CTK/qMRML headers."""
    table = {k: v for k, v in json.loads(QT_TABLE.read_text()).items() if not k.startswith("_")}
    for name, relative in HEADERS.items():
        table[name] = parse_header(headers_root / relative)
    return table


# ------------------------------------------------------------------------------------------------ signals
def _call_dropping_extra(callback: Callable, args: tuple) -> Any:
    """Call ``callback`` with as many of ``args`` as it takes (PythonQt drops the extra signal arguments)."""
    try:
        parameters = inspect.signature(callback).parameters.values()
    except (TypeError, ValueError):
        return callback(*args)
    if any(p.kind == p.VAR_POSITIONAL for p in parameters):
        return callback(*args)
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    count = min(len(args), len(positional))
    if count < len(required):
        raise TypeError(f"slot {callback!r} needs {len(required)} arguments, the signal gives {len(args)}")
    return callback(*args[:count])


class BoundSignal:
    """``widget.toggled``: PythonQt's signal object (``connect``/``disconnect``/``emit``)."""

    def __init__(self, owner: "QObject", signature: str):
        self._owner = owner
        self._signature = signature

    def connect(self, callback: Callable) -> None:
        self._owner.connect(self._signature, callback)

    def disconnect(self, callback: Callable | None = None) -> None:
        self._owner.disconnect(self._signature, callback)

    def emit(self, *args) -> None:
        self._owner.emit(self._signature, *args)


# ------------------------------------------------------------------------------------------------ base classes
class QObject:
    """Stand-in base: strict properties and signals from ``_facts``; children; dynamic properties."""

    _facts: dict = {"properties": {}, "signals": [], "class": "QObject"}
    #: property -> [(signal signature, value converter)] emitted when the property changes.
    _emits: dict = {}

    def __init__(self, *args, **kwargs):
        parent = next((a for a in args if isinstance(a, QObject)), kwargs.get("parent"))
        object.__setattr__(self, "_values", {})
        object.__setattr__(self, "_dynamic", {})
        object.__setattr__(self, "_connections", {})
        object.__setattr__(self, "_children", [])
        object.__setattr__(self, "_parent", None)
        object.__setattr__(self, "_blocked", False)
        object.__setattr__(self, "_layout", None)
        for prop, facts in self._facts["properties"].items():
            self._values[prop] = _default(facts["type"])
        self._init_values()
        text = next((a for a in args if isinstance(a, str)), None)
        if text is not None and "text" in self._facts["properties"]:
            self._values["text"] = text
        if parent is not None:
            self.setParent(parent)

    def _init_values(self) -> None:
        """Class-specific starting values (Qt's defaults)."""

    # ---- properties (attributes)
    def __getattr__(self, name: str):
        facts = type(self)._facts
        if name in facts["properties"]:
            return self._values[name]
        if name == "name":  # PythonQt: objectName as 'name'
            return self._values["objectName"]
        setter = _setter_property(name)
        if setter in facts["properties"] and facts["properties"][setter]["writable"]:
            return lambda value: setattr(self, setter, value)
        for signature in facts["signals"]:
            if signature.split("(")[0] == name:
                return BoundSignal(self, signature)
        raise AttributeError(f"{facts['class']} has no property, signal or method {name!r}")

    def __setattr__(self, name: str, value) -> None:
        facts = type(self)._facts
        if name == "name":
            name = "objectName"
        if name not in facts["properties"]:
            if name in type(self).__dict__ or any(name in k.__dict__ for k in type(self).__mro__):
                object.__setattr__(self, name, value)
                return
            raise AttributeError(f"{facts['class']} has no property {name!r}")
        if not facts["properties"][name]["writable"]:
            raise AttributeError(f"{facts['class']}.{name} is read-only")
        self._set(name, value)

    def _set(self, name: str, value) -> None:
        old = self._values.get(name)
        self._values[name] = value
        if old != value:
            self._changed(name, value)

    def _changed(self, name: str, value) -> None:
        for klass in type(self).__mro__:
            for signature, convert in klass.__dict__.get("_emits", {}).get(name, ()):
                self.emit(signature, convert(value))
        notify = self._facts["properties"][name]["notify"]
        if notify and not any(notify == s for k in type(self).__mro__ for s, _ in k.__dict__.get("_emits", {})
                              .get(name, ())):
            self.emit(notify, *(() if notify.endswith("()") else (value,)))

    def property(self, name: str):
        if name in self._facts["properties"]:
            return self._values[name]
        return self._dynamic.get(name)

    def setProperty(self, name: str, value) -> bool:
        if name in self._facts["properties"]:
            setattr(self, name, value)
            return True
        self._dynamic[name] = value
        return False

    # ---- signals
    def _signature(self, signature: str) -> str:
        normal = signature.replace(" ", "").replace("const", "").replace("&", "")
        if normal not in self._facts["signals"]:
            raise AttributeError(f"{self._facts['class']} has no signal {signature!r} (it has: "
                                 f"{', '.join(self._facts['signals'])})")
        return normal

    def connect(self, signature: str, callback: Callable) -> bool:
        self._connections.setdefault(self._signature(signature), []).append(callback)
        return True

    def disconnect(self, signature: str, callback: Callable | None = None) -> bool:
        slots = self._connections.get(self._signature(signature), [])
        if callback is None:
            slots.clear()
        elif callback in slots:
            slots.remove(callback)
        return True

    def emit(self, signature: str, *args) -> None:
        """Call the slots connected to ``signature`` (harness use: a user action or a change)."""
        if self._blocked:
            return
        for callback in list(self._connections.get(self._signature(signature), [])):
            _call_dropping_extra(callback, args)

    def blockSignals(self, block: bool) -> bool:
        was = self._blocked
        object.__setattr__(self, "_blocked", bool(block))
        return was

    def signalsBlocked(self) -> bool:
        return self._blocked

    # ---- tree
    def setParent(self, parent) -> None:
        if self._parent is not None and self in self._parent._children:
            self._parent._children.remove(self)
        object.__setattr__(self, "_parent", parent)
        if parent is not None:
            parent._children.append(self)

    def parent(self):
        return self._parent

    def children(self) -> list:
        return list(self._children)

    def findChildren(self, cls=None) -> list:
        found = []
        for child in self._children:
            if cls is None or isinstance(child, cls):
                found.append(child)
            found += child.findChildren(cls)
        return found

    def className(self) -> str:
        return self._facts["class"]

    def inherits(self, name: str) -> bool:
        return any(getattr(k, "_facts", {}).get("class") == name for k in type(self).__mro__)

    def isWidgetType(self) -> bool:
        return False

    def deleteLater(self) -> None:
        self.setParent(None)

    def setObjectName(self, name: str) -> None:
        self.objectName = name

    def __repr__(self) -> str:
        return f"<{self._facts['class']} {self._values.get('objectName', '')!r} (stand-in)>"

    def __bool__(self) -> bool:
        return True


def _setter_property(name: str) -> str | None:
    if name.startswith("set") and len(name) > 3 and name[3].isupper():
        return name[3].lower() + name[4:]
    return None


def _default(qt_type: str):
    if qt_type == "bool":
        return False
    if qt_type in ("int", "uint", "qlonglong"):
        return 0
    if qt_type in ("double", "float", "qreal"):
        return 0.0
    if qt_type == "QString":
        return ""
    if qt_type == "QStringList":
        return []
    return None


class QWidgetBase(QObject):
    """Widget behaviour shared by every widget stand-in (layout, show/hide, children by layout)."""

    def _init_values(self) -> None:
        super()._init_values()
        self._values.update(enabled=True, visible=False)

    def isWidgetType(self) -> bool:
        return True

    def setLayout(self, layout) -> None:
        object.__setattr__(self, "_layout", layout)
        layout.setParent(self)

    def layout(self):
        return self._layout

    def show(self) -> None:
        self._values["visible"] = True

    def hide(self) -> None:
        self._values["visible"] = False

    def setSizePolicy(self, *args) -> None:
        pass

    def setMRMLScene(self, scene) -> None:
        raise AttributeError(f"{self._facts['class']} has no method 'setMRMLScene'")


class QLayoutBase(QObject):
    """Layouts: added widgets become children of the layout's widget (as in Qt)."""

    def _owner(self):
        return self._parent if self._parent is not None else self

    def addWidget(self, widget, *args) -> None:
        widget.setParent(self._owner())

    def addRow(self, *items) -> None:
        for item in items:
            if isinstance(item, QLayoutBase):
                self.addLayout(item)
            elif isinstance(item, QObject):
                self.addWidget(item)

    def addLayout(self, layout, *args) -> None:
        layout.setParent(self._owner())

    def addItem(self, item) -> None:
        pass

    def addStretch(self, *args) -> None:
        pass

    def addSpacing(self, *args) -> None:
        pass


# ------------------------------------------------------------------------------------------------ behaviours
class _QAbstractButton:
    _emits = {"checked": [("toggled(bool)", bool)]}

    def click(self) -> None:
        if not self.enabled:
            return
        if self.checkable:
            self.checked = not self.checked
        self.emit("clicked(bool)", bool(self.checked))


class _QCheckBox:
    _emits = {"checked": [("stateChanged(int)", lambda v: 2 if v else 0)]}

    def _init_values(self) -> None:
        super()._init_values()
        self._values["checkable"] = True

    def isChecked(self) -> bool:
        return bool(self.checked)

    def setChecked(self, value: bool) -> None:
        self.checked = bool(value)


class _QComboBox:
    def _init_values(self) -> None:
        super()._init_values()
        self._values["currentIndex"] = -1
        object.__setattr__(self, "_items", [])

    def _set(self, name, value) -> None:
        if name == "currentIndex":
            value = int(value) if 0 <= int(value) < len(self._items) else -1
            self._values["currentText"] = self._items[value][0] if value >= 0 else ""
            self._values["currentData"] = self._items[value][1] if value >= 0 else None
        super()._set(name, value)

    def _sync(self) -> None:
        self._values["count"] = len(self._items)

    def addItem(self, text, data=None) -> None:
        self._items.append((str(text), data))
        self._sync()
        if self.currentIndex < 0:
            self._set("currentIndex", 0)

    def addItems(self, texts) -> None:
        for text in texts:
            self.addItem(text)

    def clear(self) -> None:
        self._items.clear()
        self._sync()
        self._set("currentIndex", -1)

    def itemText(self, index: int) -> str:
        return self._items[index][0] if 0 <= index < len(self._items) else ""

    def itemData(self, index: int):
        return self._items[index][1] if 0 <= index < len(self._items) else None

    def findData(self, data) -> int:
        return next((i for i, item in enumerate(self._items) if item[1] == data), -1)

    def findText(self, text) -> int:
        return next((i for i, item in enumerate(self._items) if item[0] == text), -1)


class _QPlainTextEdit:
    def appendPlainText(self, text: str) -> None:
        self._values["plainText"] = (self._values["plainText"] + "\n" if self._values["plainText"] else "") + text

    def toPlainText(self) -> str:
        return self._values["plainText"]

    def clear(self) -> None:
        self.plainText = ""


class _QProgressBar:
    def _init_values(self) -> None:
        super()._init_values()
        self._values.update(minimum=0, maximum=100, value=-1)

    def setRange(self, low: int, high: int) -> None:
        self._values.update(minimum=int(low), maximum=int(high))

    def reset(self) -> None:
        self._values["value"] = self._values["minimum"] - 1


class _QLabel:
    def setText(self, text: str) -> None:
        self.text = text


class _QTimer:
    """Fires when the harness's event loop (``slicer.app.processEvents``) finds it due."""

    running: list = []

    def _init_values(self) -> None:
        super()._init_values()
        self._values["interval"] = 0
        object.__setattr__(self, "_due", None)

    def start(self, interval: int | None = None) -> None:
        if interval is not None:
            self.interval = interval
        object.__setattr__(self, "_due", time.monotonic() + self.interval / 1000)
        self._values["active"] = True
        if self not in _QTimer.running:
            _QTimer.running.append(self)

    def stop(self) -> None:
        self._values["active"] = False
        if self in _QTimer.running:
            _QTimer.running.remove(self)

    def isActive(self) -> bool:
        return bool(self._values.get("active"))

    def fire_if_due(self) -> None:
        if self._due is not None and time.monotonic() >= self._due:
            object.__setattr__(self, "_due", time.monotonic() + self.interval / 1000)
            if self._values.get("singleShot"):
                self.stop()
            self.emit("timeout()")

    @staticmethod
    def singleShot(msec, callback) -> None:  # noqa: D102 - Qt's static helper (a callable, not a signal)
        timer = QTIMER_CLASS()
        timer._values["singleShot"] = True
        timer.connect("timeout()", callback)
        timer.start(msec)


QTIMER_CLASS: type | None = None


class _ctkSliderWidget:
    _emits = {"value": [("valueChanged(double)", float)]}

    def _init_values(self) -> None:
        super()._init_values()
        self._values.update(minimum=0.0, maximum=99.0, singleStep=1.0, pageStep=10.0, decimals=2)

    def _set(self, name, value) -> None:
        if name == "value":
            value = round(min(max(float(value), self.minimum), self.maximum), int(self.decimals))
        super()._set(name, value)


class _qMRMLWidget:
    def _init_values(self) -> None:
        super()._init_values()
        object.__setattr__(self, "_scene", None)

    def setMRMLScene(self, scene) -> None:
        object.__setattr__(self, "_scene", scene)
        self.emit("mrmlSceneChanged(vtkMRMLScene*)", scene)

    def mrmlScene(self):
        return self._scene


class _qMRMLNodeComboBox:
    """Current node among the scene's nodes of ``nodeTypes``; becomes None when that node leaves the scene."""

    def _init_values(self) -> None:
        super()._init_values()
        self._values.update(noneEnabled=False, addEnabled=True, removeEnabled=True, showChildNodeTypes=True)
        object.__setattr__(self, "_scene", None)
        object.__setattr__(self, "_node", None)
        object.__setattr__(self, "_observer", None)

    def setMRMLScene(self, scene) -> None:
        if self._scene is not None and self._observer is not None:
            self._scene.RemoveObserver(self._observer)
        object.__setattr__(self, "_scene", scene)
        if scene is not None:
            object.__setattr__(self, "_observer", scene.AddObserver(scene.NodeRemovedEvent, self._onRemoved))
        self._setNode(None)

    def mrmlScene(self):
        return self._scene

    def _onRemoved(self, caller, event) -> None:
        node = self._node
        if node is not None and (self._scene is None or self._scene.GetNodeByID(node.GetID()) is not node):
            self._setNode(None)

    def _accepts(self, node) -> bool:
        if self._scene is None or self._scene.GetNodeByID(node.GetID()) is not node:
            return False
        types_ = list(self.nodeTypes)
        if not any(node.IsA(t) for t in types_):
            return False
        if not self.showChildNodeTypes and node.GetClassName() not in types_:
            return False
        return not any(node.IsA(t) for t in self.hideChildNodeTypes)

    def nodes(self) -> list:
        """The nodes the combo box lists (harness use)."""
        if self._scene is None:
            return []
        found = [self._scene.GetNthNode(i) for i in range(self._scene.GetNumberOfNodes())]
        return [n for n in found if self._accepts(n)]

    def currentNode(self):
        return self._node

    def setCurrentNode(self, node) -> None:
        if isinstance(node, str):
            node = self._scene.GetNodeByID(node) if self._scene is not None else None
        if node is not None and not self._accepts(node):
            node = None  # Qt: a node the model does not list cannot become current
        self._setNode(node)

    def setCurrentNodeID(self, node_id: str) -> None:
        self.setCurrentNode(node_id)

    def _setNode(self, node) -> None:
        if node is self._node:
            return
        object.__setattr__(self, "_node", node)
        self._values["currentNodeID"] = node.GetID() if node is not None else ""
        self.emit("currentNodeChanged(vtkMRMLNode*)", node)
        self.emit("currentNodeChanged(bool)", node is not None)
        self.emit("currentNodeIDChanged(QString)", self._values["currentNodeID"])


BEHAVIOURS = {
    "QAbstractButton": _QAbstractButton, "QCheckBox": _QCheckBox, "QComboBox": _QComboBox,
    "QPlainTextEdit": _QPlainTextEdit, "QProgressBar": _QProgressBar, "QLabel": _QLabel, "QTimer": _QTimer,
    "ctkSliderWidget": _ctkSliderWidget, "qMRMLWidget": _qMRMLWidget, "qMRMLNodeComboBox": _qMRMLNodeComboBox,
}


def build_classes(table: dict[str, dict]) -> dict[str, type]:
    """One stand-in class per table entry, inheriting as the real classes do, with all their facts merged."""
    classes: dict[str, type] = {}

    def make(name: str) -> type:
        if name in classes:
            return classes[name]
        facts = table[name]
        base_name = facts["base"]
        if base_name is None:
            bases: tuple = (QObject,)
        else:
            bases = (make(base_name),)
        merged = {"class": name, "properties": dict(bases[0]._facts["properties"]),
                  "signals": list(bases[0]._facts["signals"])}
        merged["properties"].update(facts["properties"])
        merged["signals"] += [s for s in facts["signals"] if s not in merged["signals"]]
        mixins: tuple = (BEHAVIOURS[name],) if name in BEHAVIOURS else ()
        if name == "QWidget":
            mixins += (QWidgetBase,)
        if name == "QLayout":
            mixins += (QLayoutBase,)
        cls = type(name, mixins + bases, {"_facts": merged, "__module__": "standins"})
        classes[name] = cls
        return cls

    for name in table:
        make(name)
    return classes


# ------------------------------------------------------------------------------------------------ .ui loader
def _value(element: ET.Element):
    child = element[0]
    tag, text = child.tag, (child.text or "")
    if tag == "string":
        return text
    if tag == "bool":
        return text == "true"
    if tag == "number":
        return int(text)
    if tag == "double":
        return float(text)
    if tag == "stringlist":
        return [s.text or "" for s in child.findall("string")]
    if tag in ("enum", "set", "cstring"):
        return text
    return {c.tag: c.text for c in child}  # rect, size, sizepolicy, ...


class UiLoader:
    """``qt.QUiLoader``: builds the stand-in widget tree of a ``.ui`` file."""

    def __init__(self, classes: dict[str, type]):
        self.classes = classes

    def load(self, qfile, parent=None):
        root = ET.parse(qfile.path).getroot()
        widget = self._widget(root.find("widget"), parent)
        by_name = {w.objectName: w for w in [widget] + widget.findChildren()}
        for connection in root.iter("connection"):
            sender = by_name[connection.findtext("sender")]
            receiver = by_name[connection.findtext("receiver")]
            slot = connection.findtext("slot")
            method = getattr(receiver, slot.split("(")[0])
            sender.connect(connection.findtext("signal"), method)
        return widget

    def _widget(self, element: ET.Element, parent):
        class_name = element.get("class")
        if class_name not in self.classes:
            raise RuntimeError(f".ui widget {element.get('name')!r}: no stand-in for class {class_name}")
        widget = self.classes[class_name](parent)
        widget.objectName = element.get("name")
        self._properties(widget, element)
        layout = element.find("layout")
        if layout is not None:
            widget.setLayout(self._layout(layout))
        for child in element.findall("widget"):
            self._widget(child, widget)
        return widget

    def _layout(self, element: ET.Element):
        layout = self.classes[element.get("class")]()
        layout.objectName = element.get("name") or ""
        for item in element.findall("item"):
            child_widget, child_layout = item.find("widget"), item.find("layout")
            if child_widget is not None:
                layout.addWidget(self._widget(child_widget, None))
            elif child_layout is not None:
                layout.addLayout(self._layout(child_layout))
        return layout

    @staticmethod
    def _properties(widget, element: ET.Element) -> None:
        for prop in element.findall("property"):
            name, value = prop.get("name"), _value(prop)
            if prop.get("stdset") == "0":
                widget.setProperty(name, value)  # a dynamic property (SlicerParameterName)
            elif name not in widget._facts["properties"]:
                raise AttributeError(f".ui widget {widget.objectName!r}: {widget.className()} has no property "
                                     f"{name!r}")
            elif name in ("geometry", "sizePolicy", "maximumSize", "minimumSize", "textInteractionFlags",
                          "orientation", "sizeAdjustPolicy", "alignment"):
                widget._values[name] = value  # non-scalar Qt values are kept as read, not interpreted
            else:
                setattr(widget, name, value)


class QFile:
    """``qt.QFile``: what ``slicer.util.loadUI`` calls."""

    ReadOnly = 1

    def __init__(self, path):
        self.path = str(path)

    def exists(self) -> bool:
        return Path(self.path).is_file()

    def open(self, mode) -> bool:
        return self.exists()

    def close(self) -> None:
        pass


class Opaque:
    """A non-widget Qt value type (``QColor``, ``QIcon``, ``QSettings``...): accepts anything, does nothing."""

    def __init__(self, *args, **kwargs):
        self.args = args

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *args, **kwargs: None

    def __class_getitem__(cls, item):
        return cls


class Unavailable:
    """A widget class without a stand-in: comparable (``type(w) in (...)``), but creating one fails loudly."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError(f"no stand-in for widget class {type(self).__name__}: add it to the harness's table")


def _opaque_namespace(name: str) -> types.ModuleType:
    """An enum namespace such as ``qt.Qt`` (``qt.Qt.WaitCursor``): every attribute is its own name."""
    module = types.ModuleType(name)
    module.__getattr__ = lambda attribute: attribute if not attribute.startswith("__") else (_ for _ in ()).throw(
        AttributeError(attribute))
    return module


class Settings(Opaque):
    """``qt.QSettings``: empty (developer mode off)."""

    def contains(self, key) -> bool:
        return False

    def value(self, key, default=None):
        return default


def make_modules(headers_root: Path) -> tuple[types.ModuleType, types.ModuleType, dict[str, type]]:
    """``(qt, ctk, classes)``: stand-in modules; ``classes`` has every widget class by name (qMRML ones too)."""
    global QTIMER_CLASS
    classes = build_classes(class_table(headers_root))
    QTIMER_CLASS = classes["QTimer"]
    opaque_used: set[str] = set()

    qt = types.ModuleType("qt")
    ctk = types.ModuleType("ctk")
    for name, cls in classes.items():
        if name.startswith("ctk"):
            setattr(ctk, name, cls)
        elif name.startswith("Q"):
            setattr(qt, name, cls)
    qt.QFile = QFile
    qt.QUiLoader = lambda: UiLoader(classes)
    qt.QSettings = Settings
    qt.Qt = _opaque_namespace("qt.Qt")
    qt.QMessageBox = _opaque_namespace("qt.QMessageBox")
    qt.QSizePolicy = Opaque
    qt.QApplication = types.SimpleNamespace(topLevelWidgets=lambda: [], instance=lambda: None)

    made: dict[str, type] = {}

    def opaque(module_name: str):
        def __getattr__(attribute: str):
            if attribute.startswith("__"):
                raise AttributeError(attribute)
            key = f"{module_name}.{attribute}"
            if key not in made:
                widget_like = attribute.startswith(("QAbstract", "ctk", "qMRML", "qSlicer")) or attribute.endswith(
                    ("Widget", "Box", "Button", "Edit", "Slider", "Layout", "Spinbox"))
                made[key] = type(attribute, (Unavailable if widget_like else Opaque,), {})
                if not widget_like:
                    opaque_used.add(key)
            return made[key]
        return __getattr__

    qt.__getattr__ = opaque("qt")
    ctk.__getattr__ = opaque("ctk")
    qt.opaque_used = opaque_used
    qt.made = made
    return qt, ctk, classes
