"""Parameter node fields from a task's declared options (:mod:`MedDLLib.options`), for ``parameterNodeWrapper``.

::

    @parameterNodeWrapper
    @withOptions(ICHDetectorLib.options.INFER)
    class ICHDetectorParameterNode:
        inputVolume: vtkMRMLScalarVolumeNode
        modelName: str = ""

adds ``heatmapLabel: Annotated[str, Choice([...])] = "any"``, ``threshold: Annotated[float, WithinRange(0.01,
0.99)] = 0.5`` and ``forceCpu: bool = False`` (every task has Force CPU). A ranged number gets ``WithinRange`` (a
float on a ``ctkSliderWidget`` needs it), a choice ``Choice`` (a ``str`` on a ``QComboBox`` needs it).
:func:`optionValues` reads them back as ``{option name: value}`` for :func:`MedDLLib.options.command_arguments`.
"""

from __future__ import annotations

from typing import Annotated, Any

from MedDLLib.options import Option, widget_options


def annotation(option: Option) -> Any:
    """The parameterNodeWrapper type of ``option`` (validators from Slicer's ``parameterNodeWrapper``)."""
    from slicer.parameterNodeWrapper import Choice, WithinRange

    if option.range is not None:
        return Annotated[option.type, WithinRange(option.range[0], option.range[1])]
    if option.choices is not None:
        return Annotated[option.type, Choice(list(option.choices))]
    return option.type


def withOptions(options):
    """Class decorator (below ``@parameterNodeWrapper``): one field per widget option, then ``forceCpu``."""

    def decorate(cls):
        annotations = dict(cls.__dict__.get("__annotations__", {}))
        for option in widget_options(options):
            annotations[option.field] = annotation(option)
            setattr(cls, option.field, option.default)
        cls.__annotations__ = annotations
        return cls

    return decorate


def optionValues(parameterNode, options) -> dict[str, Any]:
    """``{option name: value}`` of the parameter node's option fields (Force CPU included)."""
    return {option.name: getattr(parameterNode, option.field) for option in widget_options(options)}
