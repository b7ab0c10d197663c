"""Small stand-ins, written here, for the parts of 3D Slicer that the ``slicer-core`` package
(real MRML classes, Slicer's ``slicer.util``) does not have, so both modules' Logic classes run
headless in pytest: the scripted-module base classes, the parameter-node wrapper (values
serialized into the real parameter node, node references as MRML references, as Slicer does),
``slicer.i18n``, ``slicer.app`` without a GUI (no layout manager), ``slicer.modules`` with the real
volume rendering logic, and an empty ``qt`` (the modules import it; the Logic does not use it).
"""

from __future__ import annotations

import importlib
import pathlib
import sys
import types
import typing

import slicer
import slicer.util

_MISSING = object()


class Choice:
    def __init__(self, choices) -> None:
        self.choices = list(choices)


class WithinRange:
    def __init__(self, low, high) -> None:
        self.low, self.high = low, high


def _plain_type(annotation):
    """``Annotated[int, WithinRange(...)]`` -> int."""
    if typing.get_origin(annotation) is typing.Annotated:
        return typing.get_args(annotation)[0]
    return annotation


def _is_node_type(kind) -> bool:
    return isinstance(kind, type) and kind.__name__.startswith("vtkMRML")


def parameterNodeWrapper(cls):
    """A class whose annotated attributes read and write the wrapped parameter node."""
    fields = {name: _plain_type(annotation) for name, annotation in cls.__annotations__.items()}
    defaults = {name: cls.__dict__.get(name, _MISSING) for name in fields}

    class Wrapper:
        def __init__(self, node) -> None:
            object.__setattr__(self, "parameterNode", node)

        def __getattr__(self, name):
            if name not in fields:
                raise AttributeError(name)
            node, kind = self.parameterNode, fields[name]
            if _is_node_type(kind):
                return node.GetNodeReference(name)
            text = node.GetParameter(name)
            if not text:
                default = defaults[name]
                return default if default is not _MISSING else (pathlib.Path("") if kind is pathlib.Path else None)
            if kind is bool:
                return text == "True"
            return kind(text)

        def __setattr__(self, name, value) -> None:
            if name not in fields:
                raise AttributeError(f"{cls.__name__} has no parameter {name}")
            if _is_node_type(fields[name]):
                self.parameterNode.SetNodeReferenceID(name, value.GetID() if value is not None else None)
            else:
                self.parameterNode.SetParameter(name, "" if value is None else str(value))

    Wrapper.__name__ = cls.__name__
    return Wrapper


class ScriptedLoadableModule:
    def __init__(self, parent) -> None:
        self.parent = parent


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None) -> None:
        self.parent = parent


class ScriptedLoadableModuleTest:
    pass


class ScriptedLoadableModuleLogic:
    """Slicer's: one parameter node per module in the scene, found by its module name."""

    def __init__(self, parent=None) -> None:
        self.moduleName = type(self).__name__.removesuffix("Logic")

    def getParameterNode(self):
        for node in slicer.util.getNodesByClass("vtkMRMLScriptedModuleNode"):
            if node.GetAttribute("ModuleName") == self.moduleName:
                return node
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", self.moduleName)
        node.SetAttribute("ModuleName", self.moduleName)
        return node


def _module(name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    return module


def install(monkeypatch, temporary: pathlib.Path) -> None:
    """Put the stand-ins in place (undone by ``monkeypatch``) with a new, empty scene."""
    scene = slicer.vtkMRMLScene()
    volume_rendering = slicer.vtkSlicerVolumeRenderingLogic()
    volume_rendering.SetMRMLScene(scene)
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    app = types.SimpleNamespace(temporaryPath=str(temporary), processEvents=lambda: None, layoutManager=lambda: None)
    monkeypatch.setattr(slicer, "app", app, raising=False)
    modules = types.SimpleNamespace(volumerendering=types.SimpleNamespace(logic=lambda: volume_rendering))
    monkeypatch.setattr(slicer, "modules", modules, raising=False)
    monkeypatch.setattr(slicer.util, "setSliceViewerLayers", lambda *args, **kwargs: None)
    # Slicer's registry of loaded modules: a module's Logic by its name (here: made from its file).
    monkeypatch.setattr(
        slicer.util, "getModuleLogic", lambda name: getattr(importlib.import_module(name), f"{name}Logic")()
    )
    stand_ins = {
        "qt": _module("qt"),
        "slicer.i18n": _module("slicer.i18n", tr=lambda text: text, translate=lambda context, text: text),
        "slicer.parameterNodeWrapper": _module(
            "slicer.parameterNodeWrapper",
            Choice=Choice,
            WithinRange=WithinRange,
            parameterNodeWrapper=parameterNodeWrapper,
        ),
        "slicer.ScriptedLoadableModule": _module(
            "slicer.ScriptedLoadableModule",
            ScriptedLoadableModule=ScriptedLoadableModule,
            ScriptedLoadableModuleWidget=ScriptedLoadableModuleWidget,
            ScriptedLoadableModuleLogic=ScriptedLoadableModuleLogic,
            ScriptedLoadableModuleTest=ScriptedLoadableModuleTest,
        ),
    }
    for name, module in stand_ins.items():
        if name == "qt" and "qt" in sys.modules:
            continue
        monkeypatch.setitem(sys.modules, name, module)
        if name.startswith("slicer."):
            monkeypatch.setattr(slicer, name.split(".", 1)[1], module, raising=False)
    for name in [n for n in sys.modules if n.startswith(("IXGSReconstruction", "IXGSStandardize"))] + [
        "IXGSCommonLib.scripted_module"
    ]:
        monkeypatch.delitem(sys.modules, name, raising=False)  # imported again over the stand-ins
