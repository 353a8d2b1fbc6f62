"""Task options declared once: the command line, the widget's parameter node and its child command derive from it.

A task declares each option of ``meddl infer``/``batch`` once, in its light ``<Task>Lib/options.py`` (no numpy or
torch: the module files import it when Slicer starts)::

    THRESHOLD = Option("threshold", float, 0.5, "decision threshold on the study-level 'any' probability",
                       range=(0.01, 0.99))
    INFER = (HEATMAP_LABEL, THRESHOLD, ACCEPT_NON_HEAD)

and everything else is derived:

- the command line: :func:`add_arguments` (``--threshold``, type, default, range and choices checked with one
  clear line, help with the default and unit);
- the widget's parameter node: ``MedDLWidgets.parameters.withOptions`` (``Annotated[float, WithinRange(lo, hi)]``
  for a ranged number, ``Annotated[str, Choice([...])]`` for choices; field ``heatmapLabel`` for option
  ``heatmap_label``);
- the widget's child command: :func:`command_arguments` (what the parameter node holds, as ``meddl`` arguments
  the same parser reads back).

:data:`FORCE_CPU` is the option every task shares (``--force-cpu`` of the common ``meddl`` parser).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .errors import InputError

_TYPES = (bool, int, float, str)


@dataclasses.dataclass(frozen=True)
class Option:
    """One task option.

    Attributes:
        name: Python name (``heatmap_label``); the flag is ``--heatmap-label``, the parameter node field
            ``heatmapLabel``.
        type: ``bool`` (a flag, default False), ``int``, ``float`` or ``str``.
        default: the value when not given.
        help: one line for ``--help`` and the widget's tool tip (default and unit are added to ``--help``).
        range: inclusive ``(low, high)`` of a number (the widget's slider range), or None.
        choices: the allowed values of a ``str`` option, or None.
        unit: unit of a number (``"mm"``, ``"s"``), "" when it has none.
        widget: also a parameter node field (False: command line only).
    """

    name: str
    type: type
    default: Any
    help: str
    range: tuple[float, float] | None = None
    choices: tuple[str, ...] | None = None
    unit: str = ""
    widget: bool = True

    def __post_init__(self) -> None:
        if self.type not in _TYPES:
            raise TypeError(f"option {self.name}: type must be one of bool, int, float, str")
        if self.type is bool and self.default is not False:
            raise TypeError(f"option {self.name}: a flag defaults to False")
        if self.choices is not None:
            object.__setattr__(self, "choices", tuple(self.choices))
        self.check(self.default)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def field(self) -> str:
        head, *rest = self.name.split("_")
        return head + "".join(word.capitalize() for word in rest)

    def check(self, value: Any) -> Any:
        """``value`` converted to the option's type; raises InputError (one line) when it is not allowed."""
        if self.type is bool:
            if not isinstance(value, bool):
                raise InputError(f"{self.flag}: expected true or false, got {value!r}")
            return value
        try:
            converted = self.type(value)
        except (TypeError, ValueError):
            raise InputError(f"{self.flag}: expected {self.type.__name__}, got {value!r}") from None
        if self.range is not None and not self.range[0] <= converted <= self.range[1]:
            raise InputError(f"{self.flag}: {converted} is outside [{self.range[0]}, {self.range[1]}]"
                             + (f" {self.unit}" if self.unit else ""))
        if self.choices is not None and converted not in self.choices:
            raise InputError(f"{self.flag}: {converted!r} is not one of {', '.join(self.choices)}")
        return converted

    def add_argument(self, parser: argparse.ArgumentParser) -> None:
        """Add ``--<name>`` to ``parser`` (a bad value is a usage error naming the flag)."""
        if self.type is bool:
            parser.add_argument(self.flag, action="store_true", help=self.help)
            return
        unit = f" {self.unit}" if self.unit else ""
        limits = f", {self.range[0]}..{self.range[1]}{unit}" if self.range else ""
        parser.add_argument(self.flag, type=self._parse, default=self.default, metavar=self.name.upper(),
                            help=f"{self.help} (default {self.default}{unit}{limits}"
                                 + (f"; one of {', '.join(self.choices)}" if self.choices else "") + ")")

    def _parse(self, text: str) -> Any:
        try:
            return self.check(text)
        except InputError as exc:
            raise argparse.ArgumentTypeError(str(exc).split(": ", 1)[-1]) from None

    def arguments(self, value: Any) -> list[str]:
        """``value`` as ``meddl`` arguments (a flag: present or absent; a float written exactly)."""
        value = self.check(value)
        if self.type is bool:
            return [self.flag] if value else []
        return [self.flag, repr(value) if self.type is float else str(value)]


#: Shared by every task: run the network on the CPU even when a GPU is there (``--force-cpu``).
FORCE_CPU = Option("force_cpu", bool, False, "use the CPU even when a GPU is available")


def add_arguments(parser: argparse.ArgumentParser, options: Iterable[Option]) -> None:
    """Add every option's flag to ``parser``."""
    for option in options:
        option.add_argument(parser)


def defaults(options: Iterable[Option]) -> dict[str, Any]:
    """``{name: default}``."""
    return {option.name: option.default for option in options}


def widget_options(options: Iterable[Option]) -> list[Option]:
    """The options that are also parameter node fields, :data:`FORCE_CPU` last."""
    return [option for option in options if option.widget] + [FORCE_CPU]


def command_arguments(options: Sequence[Option], values: Mapping[str, Any]) -> list[str]:
    """``meddl`` arguments for ``values`` (``{name: value}``; a missing name takes its default).

    Raises:
        InputError: a value outside its range or choices, or a name no option has.
    """
    known = {option.name for option in options} | {FORCE_CPU.name}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    arguments: list[str] = []
    for option in [*options, FORCE_CPU] if FORCE_CPU not in options else options:
        arguments += option.arguments(values.get(option.name, option.default))
    return arguments


def infer_command(task: str, input_path: str | os.PathLike, model: str | None, output: str | os.PathLike,
                  options: Sequence[Option], values: Mapping[str, Any]) -> list[str]:
    """The widget's child command: ``infer <task> --input I --model M --output D`` and the option ``values``.

    Raises:
        InputError: no model selected, or a value the option does not allow (see :func:`command_arguments`).
    """
    if not model:
        raise InputError(f"no {task} model selected: train one with 'meddl train {task}' or import a model package")
    return ["infer", task, "--input", os.fspath(input_path), "--model", str(model), "--output", os.fspath(output),
            *command_arguments(options, values)]
