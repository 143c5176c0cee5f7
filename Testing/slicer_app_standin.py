"""SlicerAppStandIn: a test stand-in for the 3D Slicer application, so that the module's own code runs in CI.

The Slicer application cannot be installed here. This stand-in covers only the API VistaFinetune.py uses:

- ``qt``: PySide6 (offscreen) classes made to behave like Slicer's PythonQt: Qt properties read and written as
  attributes (``label.text`` is a string, ``button.enabled = False`` sets the property), signals connected by
  signature (``button.connect("clicked(bool)", slot)``), ``widget.name`` for the object name; and a ``QUiLoader``
  that builds every .ui widget from those classes.
- stand-ins for the CTK/qMRML widgets the .ui uses (``ctkCollapsibleButton``, ``ctkPathLineEdit``,
  ``qMRMLNodeComboBox``, ``qMRMLWidget``), with the properties and signals the module touches;
- ``slicer.mrmlScene``: a real MRML scene from the slicer-core wheel; ``slicer.app`` (events, testing flag);
  ``slicer.i18n``; ``slicer.ScriptedLoadableModule``; ``slicer.parameterNodeWrapper`` (typed fields stored in a
  real ``vtkMRMLScriptedModuleNode``, ``connectGui`` for the widget kinds the .ui binds); dialogs of
  ``slicer.util`` recorded instead of shown. Everything else of ``slicer.util`` is Slicer's own (slicer-core).

What only a real Slicer can check (PythonQt itself, real CTK widgets, the .ui's scene fan-out, layouts and
views) is listed in the README.
"""

from __future__ import annotations

import os
import sys
import types
import typing
import unittest
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt is imported

from PySide6 import QtCore, QtGui, QtUiTools, QtWidgets  # noqa: E402
from PySide6.QtCore import Property, Signal, Slot  # noqa: E402

# Qt properties that share their name with a getter method: PythonQt returns the property's value for
# ``widget.text`` (so ``widget.text()`` fails in Slicer); the stand-in does the same for these names.
SHADOWED_PROPERTIES = (
    "text",
    "value",
    "count",
    "currentIndex",
    "currentText",
    "toolTip",
    "title",
    "minimum",
    "maximum",
)


class _PropertyAttribute:
    """``widget.NAME`` reads and writes the Qt property NAME, as PythonQt does."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, obj, owner=None):
        return self if obj is None else obj.property(self.name)

    def __set__(self, obj, value) -> None:
        if not obj.setProperty(self.name, value):
            raise TypeError(f"{type(obj).__name__}.{self.name}: cannot set {value!r}")


class PythonQtStyle:
    """The attribute behaviour of PythonQt for PySide6 classes: a base class, plus :func:`withPythonQtStyle`,
    which puts ``connect`` and ``name`` on the class itself (from a base class, shiboken's QObject.connect wins)."""

    name = property(lambda self: self.objectName(), lambda self, value: self.setObjectName(value))

    def __getattr__(self, name: str):
        # Only reached when normal lookup fails: properties with no same-named method (enabled, checked, ...).
        if not name.startswith("_") and QtCore.QObject.metaObject(self).indexOfProperty(name) >= 0:
            return self.property(name)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __setattr__(self, name: str, value) -> None:
        if not name.startswith("_") and not hasattr(type(self), name):
            try:
                index = QtCore.QObject.metaObject(self).indexOfProperty(name)
            except RuntimeError:  # the C++ object is not made yet
                index = -1
            if index >= 0:
                if not self.setProperty(name, value):
                    raise TypeError(f"{type(self).__name__}.{name}: cannot set {value!r}")
                return
        super().__setattr__(name, value)

    def connect(self, signature, slot=None, *args):
        """``obj.connect("clicked(bool)", slot)``: PythonQt's way of connecting a signal by its signature."""
        if isinstance(signature, str) and "(" in signature:
            signal = getattr(self, signature.split("(", 1)[0])
            signal.connect(slot)
            return True
        return QtCore.QObject.connect(self, signature, slot, *args)


_CLASSES: dict[str, type] = {}


def withPythonQtStyle(cls: type) -> type:
    """Give a PySide6 QObject class PythonQt's attribute behaviour (class decorator)."""
    for name in ("name", "connect"):
        setattr(cls, name, PythonQtStyle.__dict__[name])
    return cls


def pythonQtClass(base: type) -> type:
    """The PythonQt-style subclass of a PySide6 QObject class (made once)."""
    if base.__name__ not in _CLASSES:
        meta = base.staticMetaObject
        names = {meta.property(i).name() for i in range(meta.propertyCount())}
        namespace = {name: _PropertyAttribute(name) for name in SHADOWED_PROPERTIES if name in names}
        _CLASSES[base.__name__] = withPythonQtStyle(type(base.__name__, (PythonQtStyle, base), namespace))
    return _CLASSES[base.__name__]


# --- CTK and qMRML widgets the .ui uses ----------------------------------------------------------------------------


@withPythonQtStyle
class ctkCollapsibleButton(PythonQtStyle, QtWidgets.QGroupBox):
    """Stand-in: a section whose header text is ``text``; ``collapsed`` hides its contents."""

    contentsCollapsed = Signal(bool)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._collapsed = False

    def _getText(self) -> str:
        return QtWidgets.QGroupBox.title(self)

    def _setText(self, text: str) -> None:
        self.setTitle(text)

    def _getCollapsed(self) -> bool:
        return self._collapsed

    def _setCollapsed(self, collapsed: bool) -> None:
        self._collapsed = bool(collapsed)
        for child in self.findChildren(QtWidgets.QWidget, options=QtCore.Qt.FindDirectChildrenOnly):
            child.setVisible(not self._collapsed)
        self.contentsCollapsed.emit(self._collapsed)

    text = Property(str, _getText, _setText)
    collapsed = Property(bool, _getCollapsed, _setCollapsed)


@withPythonQtStyle
class ctkPathLineEdit(PythonQtStyle, QtWidgets.QWidget):
    """Stand-in: a path field; ``currentPath``, an inner line edit, and ``currentPathChanged(QString)`` emitted as
    CTK emits it: only for valid input (CTK's validator pattern is ".+"), so clearing the field emits nothing."""

    currentPathChanged = Signal(str)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self._edit = pythonQtClass(QtWidgets.QLineEdit)(self)
        layout.addWidget(self._edit)
        self._edit.textChanged.connect(self._onTextChanged)
        self._filters = 0

    def _onTextChanged(self, text: str) -> None:
        if text:
            self.currentPathChanged.emit(text)

    def _getPath(self) -> str:
        return self._edit.property("text")

    def _setPath(self, path: str) -> None:
        self._edit.setText(str(path))

    currentPath = Property(str, _getPath, _setPath)
    filters = Property(int, lambda self: self._filters, lambda self, value: setattr(self, "_filters", value))


@withPythonQtStyle
class qMRMLNodeComboBox(PythonQtStyle, QtWidgets.QComboBox):
    """Stand-in: a node selector listing the scene's nodes of ``nodeTypes``."""

    currentNodeChanged = Signal(object)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._nodeTypes: list[str] = []
        self._flags = {"noneEnabled": False, "addEnabled": True, "removeEnabled": True, "showChildNodeTypes": True}
        self._scene = None
        self._nodes: list = []

    def _getNodeTypes(self) -> list:
        return self._nodeTypes

    def _setNodeTypes(self, value: list) -> None:
        self._nodeTypes = list(value)

    def _flag(name: str):  # noqa: N805 - builds properties at class creation
        return Property(bool, lambda self: self._flags[name], lambda self, v: self._flags.__setitem__(name, bool(v)))

    nodeTypes = Property("QStringList", _getNodeTypes, _setNodeTypes)
    noneEnabled = _flag("noneEnabled")
    addEnabled = _flag("addEnabled")
    removeEnabled = _flag("removeEnabled")
    showChildNodeTypes = _flag("showChildNodeTypes")

    @Slot("vtkMRMLScene*")
    def setMRMLScene(self, scene) -> None:
        self._scene = scene
        self.clear()
        self._nodes = [None] if self._flags["noneEnabled"] else []
        for nodeType in self._nodeTypes:
            collection = scene.GetNodesByClass(nodeType)
            self._nodes += [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]
        for node in self._nodes:
            self.addItem("None" if node is None else node.GetName())

    def currentNode(self):
        index = QtWidgets.QComboBox.currentIndex(self)
        return self._nodes[index] if 0 <= index < len(self._nodes) else None


@withPythonQtStyle
class qMRMLWidget(PythonQtStyle, QtWidgets.QWidget):
    """Stand-in: the panel's top-level widget. In Slicer its .ui connections pass the scene to the selectors;
    PySide6 cannot carry a vtkMRMLScene* signal, so ``setMRMLScene`` hands it to them directly."""

    # Declared with Slicer's C++ signature so that the .ui's connections resolve (never emitted here).
    mrmlSceneChanged = Signal("vtkMRMLScene*")

    def setMRMLScene(self, scene) -> None:
        self._scene = scene
        for selector in self.findChildren(qMRMLNodeComboBox):
            selector.setMRMLScene(scene)

    def mrmlScene(self):
        return getattr(self, "_scene", None)


CUSTOM_WIDGETS = {cls.__name__: cls for cls in (ctkCollapsibleButton, ctkPathLineEdit, qMRMLNodeComboBox, qMRMLWidget)}


class QUiLoader(QtUiTools.QUiLoader):
    """Builds every widget of a .ui from the PythonQt-style classes and the CTK/qMRML stand-ins."""

    def createWidget(self, className, parent=None, name=""):
        cls = CUSTOM_WIDGETS.get(className)
        if cls is None:
            base = getattr(QtWidgets, className, None)
            if base is None:
                return super().createWidget(className, parent, name)
            cls = pythonQtClass(base)
        widget = cls(parent)
        widget.setObjectName(name)
        return widget


def makeQtModule() -> types.ModuleType:
    """A ``qt`` module: PySide6's QtCore, QtGui and QtWidgets, QObject classes in their PythonQt-style form."""
    module = types.ModuleType("qt", "SlicerAppStandIn: PySide6 behaving like Slicer's PythonQt")

    def lookup(name: str):
        if name == "QUiLoader":
            return QUiLoader
        for source in (QtWidgets, QtGui, QtCore):
            value = getattr(source, name, None)
            if value is not None:
                if isinstance(value, type) and issubclass(value, QtCore.QObject):
                    return pythonQtClass(value)
                return value
        raise AttributeError(f"module 'qt' has no attribute {name!r}")

    module.__getattr__ = lookup
    return module


# --- slicer.parameterNodeWrapper -----------------------------------------------------------------------------------


def _toText(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def _fromText(kind: type, text: str):
    if kind is bool:
        return text == "true"
    return kind(text)


class WithinRange:
    """``Annotated[int, WithinRange(1, 10)]``: the value must lie in [minimum, maximum] (Slicer's validator)."""

    def __init__(self, minimum, maximum) -> None:
        self.minimum, self.maximum = minimum, maximum

    def validate(self, value) -> None:
        if not self.minimum <= value <= self.maximum:
            raise ValueError(f"{value} is not within [{self.minimum}, {self.maximum}]")


class Minimum(WithinRange):
    def __init__(self, minimum) -> None:
        super().__init__(minimum, float("inf"))


class Maximum(WithinRange):
    def __init__(self, maximum) -> None:
        super().__init__(float("-inf"), maximum)


def _bounds(annotations: tuple) -> tuple[float, float] | None:
    """The (minimum, maximum) the validators allow, or None without a range validator."""
    ranges = [a for a in annotations if isinstance(a, WithinRange)]
    if not ranges:
        return None
    return max(r.minimum for r in ranges), min(r.maximum for r in ranges)


class _GuiBinding:
    """One widget bound to one parameter: read, write and the change signal, by widget kind.

    Like Slicer's spin box connectors, binding replaces the spin box's range (the .ui's is lost): with the
    annotated Minimum/Maximum/WithinRange, else the whole int range or -inf..+inf."""

    def __init__(self, widget, kind: type, annotations: tuple = ()) -> None:
        self.widget = widget
        if isinstance(widget, QtWidgets.QCheckBox):
            self.read, self.write, self.signal = widget.isChecked, widget.setChecked, widget.toggled
        elif isinstance(widget, (QtWidgets.QSpinBox, QtWidgets.QDoubleSpinBox)):
            integer = isinstance(widget, QtWidgets.QSpinBox)
            low, high = (-(2**31), 2**31 - 1) if integer else (float("-inf"), float("inf"))
            bounds = _bounds(annotations)
            if bounds is not None:
                low, high = max(low, bounds[0]), min(high, bounds[1])
            widget.setRange(int(low) if integer else low, int(high) if integer else high)
            self.read = lambda: widget.property("value")
            self.write, self.signal = widget.setValue, widget.valueChanged
        elif isinstance(widget, QtWidgets.QLineEdit):
            self.read = lambda: widget.property("text")
            self.write, self.signal = widget.setText, widget.textChanged
        else:
            raise TypeError(f"SlicerAppStandIn: no GUI connector for {type(widget).__name__} ({kind.__name__})")


def parameterNodeWrapper(cls: type) -> type:
    """Typed fields stored as parameters of a vtkMRMLScriptedModuleNode (int, float, str, bool are enough here)."""
    annotated = typing.get_type_hints(cls, include_extras=True)
    hints = {name: kind.__origin__ if typing.get_origin(kind) is typing.Annotated else kind
             for name, kind in annotated.items()}  # fmt: skip
    extras = {name: getattr(kind, "__metadata__", ()) for name, kind in annotated.items()}
    defaults = {name: getattr(cls, name) for name in hints if hasattr(cls, name)}

    def field(name: str, kind: type) -> property:
        def get(self):
            text = self.parameterNode.GetParameter(name)
            return defaults.get(name, kind()) if text == "" and name not in self._set else _fromText(kind, text)

        def set_(self, value) -> None:
            for validator in extras[name]:
                validator.validate(kind(value))
            self._set.add(name)
            self.parameterNode.SetParameter(name, _toText(kind(value)))

        return property(get, set_)

    def __init__(self, parameterNode) -> None:
        object.__setattr__(self, "parameterNode", parameterNode)
        object.__setattr__(self, "_set", set(parameterNode.GetParameterNames()))
        object.__setattr__(self, "_bindings", {})

    def connectGui(self, ui) -> int:
        widgets = [w for w in vars(ui).values() if isinstance(w, QtCore.QObject) and w.property("SlicerParameterName")]
        bindings = []
        for widget in widgets:
            name = widget.property("SlicerParameterName")
            if name not in hints:
                raise ValueError(f"{widget.objectName()}: SlicerParameterName {name!r} is not a parameter")
            binding = _GuiBinding(widget, hints[name], extras[name])
            binding.write(getattr(self, name))
            binding.slot = lambda *args, b=binding, n=name: setattr(self, n, b.read())
            binding.signal.connect(binding.slot)
            bindings.append((name, binding))

        def toGui(caller=None, event=None) -> None:
            for name, binding in bindings:
                if binding.read() != getattr(self, name):
                    binding.widget.blockSignals(True)
                    binding.write(getattr(self, name))
                    binding.widget.blockSignals(False)

        observer = self.parameterNode.AddObserver("ModifiedEvent", toGui)
        tag = max(self._bindings, default=0) + 1
        self._bindings[tag] = (bindings, observer)
        return tag

    def disconnectGui(self, tag) -> None:
        if tag not in self._bindings:
            return
        bindings, observer = self._bindings.pop(tag)
        for _name, binding in bindings:
            binding.signal.disconnect(binding.slot)
        self.parameterNode.RemoveObserver(observer)

    namespace = {name: field(name, kind) for name, kind in hints.items()}
    namespace.update(
        __init__=__init__,
        connectGui=connectGui,
        disconnectGui=disconnectGui,
        AddObserver=lambda self, *args: self.parameterNode.AddObserver(*args),
        RemoveObserver=lambda self, tag: self.parameterNode.RemoveObserver(tag),
        __doc__=cls.__doc__,
    )
    return type(cls.__name__, (), namespace)


# --- slicer.ScriptedLoadableModule ---------------------------------------------------------------------------------


@withPythonQtStyle
class ModulePanel(PythonQtStyle, QtWidgets.QWidget):
    """Stand-in for qSlicerScriptedLoadableModuleWidget: the widget a module panel is built in."""

    def __init__(self) -> None:
        super().__init__()
        QtWidgets.QVBoxLayout(self)
        self.isEntered = True


def makeScriptedLoadableModule(slicer) -> types.ModuleType:
    module = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent) -> None:
            self.parent = parent
            self.moduleName = type(self).__name__

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None) -> None:
            self.parent = parent if parent is not None else ModulePanel()
            self.layout = self.parent.layout()
            self.moduleName = type(self).__name__.removesuffix("Widget")

        def resourcePath(self, filename: str) -> str:
            moduleFile = sys.modules[type(self).__module__].__file__
            return str(Path(moduleFile).parent / "Resources" / filename)

        def setup(self) -> None:
            """Slicer adds its Reload & Test section here in developer mode."""

        def onReload(self) -> None:
            """Slicer reloads the module's source here."""

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None) -> None:
            self.moduleName = type(self).__name__.removesuffix("Logic")

        def getParameterNode(self):
            scene = slicer.mrmlScene
            nodes = scene.GetNodesByClass("vtkMRMLScriptedModuleNode")
            for i in range(nodes.GetNumberOfItems()):
                node = nodes.GetItemAsObject(i)
                if node.GetAttribute("ModuleName") == self.moduleName:
                    return node
            node = slicer.vtkMRMLScriptedModuleNode()
            node.SetName(self.moduleName)
            node.SetAttribute("ModuleName", self.moduleName)
            scene.AddNode(node)
            return node

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message, msec=0) -> None:
            print(message)

    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                ScriptedLoadableModuleTest):  # fmt: skip
        setattr(module, cls.__name__, cls)
    module.__all__ = [name for name in vars(module) if name.startswith("Scripted")]
    return module


# --- the application -----------------------------------------------------------------------------------------------


class AppStandIn:
    """``slicer.app``: the few calls the module makes."""

    majorVersion, minorVersion = 5, 10  # the oldest Slicer the extension supports

    def __init__(self, application: QtWidgets.QApplication) -> None:
        self.application = application

    def processEvents(self) -> None:
        self.application.processEvents()

    def testingEnabled(self) -> bool:
        return False

    def layoutManager(self):
        """None, as in Slicer without a main window: there are no views to lay out."""
        return None

    def setOverrideCursor(self, cursor) -> None:
        """No cursor offscreen."""

    def restoreOverrideCursor(self) -> None:
        """No cursor offscreen."""


class SlicerAppStandIn:
    """Install the stand-in (``qt``, ``slicer.*``), run module code, then take it all away again."""

    def __init__(self) -> None:
        import slicer
        import slicer.util

        self.slicer = slicer
        self.application = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
        self.scene = slicer.vtkMRMLScene()
        self.errors: list[str] = []  # what slicer.util.errorDisplay would have shown
        self.questions: list[str] = []  # what slicer.util.confirmOkCancelDisplay asked
        self.answer = True
        self._saved: dict = {}
        self._savedModules: dict = {}

    def _set(self, owner, name: str, value) -> None:
        self._saved.setdefault((id(owner), name), (owner, name, getattr(owner, name, None), hasattr(owner, name)))
        setattr(owner, name, value)

    def install(self) -> SlicerAppStandIn:
        slicer = self.slicer
        i18n = types.ModuleType("slicer.i18n")
        i18n.tr = lambda text: text
        i18n.translate = lambda context, text: text
        wrapper = types.ModuleType("slicer.parameterNodeWrapper")
        wrapper.parameterNodeWrapper = parameterNodeWrapper
        wrapper.WithinRange, wrapper.Minimum, wrapper.Maximum = WithinRange, Minimum, Maximum
        modules = {
            "qt": makeQtModule(),
            "slicer.i18n": i18n,
            "slicer.parameterNodeWrapper": wrapper,
            "slicer.ScriptedLoadableModule": makeScriptedLoadableModule(slicer),
        }
        for name, module in modules.items():
            self._savedModules.setdefault(name, sys.modules.get(name))
            sys.modules[name] = module
        self._set(slicer, "mrmlScene", self.scene)
        self._set(slicer, "app", AppStandIn(self.application))
        self._set(slicer, "i18n", i18n)
        self._set(slicer, "ScriptedLoadableModule", modules["slicer.ScriptedLoadableModule"])
        self._set(slicer, "parameterNodeWrapper", wrapper)
        self._set(slicer.util, "errorDisplay", lambda text, *args, **kwargs: self.errors.append(text))
        self._set(slicer.util, "confirmOkCancelDisplay", self._confirm)
        self.observeMarkups(self.scene)
        return self

    def observeMarkups(self, scene) -> None:
        """What Slicer's application logic and Markups logic do: a selection node singleton, and every markups node
        added to the scene becomes the active place list (vtkSlicerMarkupsLogic::OnMRMLSceneNodeAdded)."""
        import vtk

        if scene.GetNodeByID("vtkMRMLSelectionNodeSingleton") is None:
            selection = self.slicer.vtkMRMLSelectionNode()
            selection.SetSingletonTag("Singleton")
            scene.AddNode(selection)

        @vtk.calldata_type(vtk.VTK_OBJECT)
        def onNodeAdded(caller, event, node) -> None:
            if node is not None and node.IsA("vtkMRMLMarkupsNode"):
                caller.GetNodeByID("vtkMRMLSelectionNodeSingleton").SetActivePlaceNodeID(node.GetID())

        scene.AddObserver(scene.NodeAddedEvent, onNodeAdded)

    def _confirm(self, text, *args, **kwargs) -> bool:
        self.questions.append(text)
        return self.answer

    def uninstall(self) -> None:
        for owner, name, value, existed in reversed(list(self._saved.values())):
            if existed:
                setattr(owner, name, value)
            else:
                delattr(owner, name)
        for name, module in self._savedModules.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        self._saved.clear()
        self._savedModules.clear()

    def processEventsUntil(self, predicate, timeout: float, interval: float = 0.05) -> bool:
        """Run Qt's event loop (timers fire) until ``predicate()`` or ``timeout`` seconds."""
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.application.processEvents()
            if predicate():
                return True
            time.sleep(interval)
        return predicate()
