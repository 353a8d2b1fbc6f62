"""Keep each module's CMakeLists.txt file lists equal to the files on disk.

Slicer packages only the files a scripted module lists in ``MODULE_PYTHON_SCRIPTS`` and
``MODULE_PYTHON_RESOURCES``; a file left out is silently missing from the installed extension. This script
rewrites both lists of every module (the ``add_subdirectory`` entries of the top-level CMakeLists.txt) from
the files in the module folder; ``--check`` only reports differences and exits 1 when there are any.

Rules (one place, also used by ``Testing/test_extension_layout.py``):

- every ``*.py`` file of the module folder is a script, except those under ``Testing/``;
- every other file is a resource, except ``CMakeLists.txt`` files, anything under ``Testing/``, ``__pycache__``
  folders, compiled files and hidden files.

Usage (from the repository root)::

    python scripts/update_cmake_lists.py            # rewrite the lists
    python scripts/update_cmake_lists.py --check    # report, exit 1 if a list is out of date
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPTS_VAR = "MODULE_PYTHON_SCRIPTS"
RESOURCES_VAR = "MODULE_PYTHON_RESOURCES"
_IGNORED_DIRS = {"Testing", "__pycache__"}
_IGNORED_SUFFIXES = {".pyc", ".pyo"}

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_VARIABLE = re.compile(r"\$\{([A-Za-z0-9_]+)\}")


def _scan_commands(text: str) -> list[tuple[str, list[str], int, int]]:
    """``(lower-case name, arguments, start, end)`` of each command call in a CMake file.

    Handles what a Slicer extension's CMake files use: ``#`` line comments, quoted arguments (which may hold
    parentheses, ``#`` and line breaks; quotes are removed) and nested unquoted parentheses. ``end`` is the
    offset just after the closing parenthesis. Variables are not expanded.
    """
    commands = []
    pos, n = 0, len(text)
    while pos < n:
        ch = text[pos]
        if ch == "#":  # comment to the end of the line
            newline = text.find("\n", pos)
            pos = n if newline < 0 else newline + 1
            continue
        match = _IDENTIFIER.match(text, pos)
        if match is None:
            pos += 1
            continue
        i = match.end()
        while i < n and text[i] in " \t":
            i += 1
        if i >= n or text[i] != "(":
            pos = match.end()
            continue
        args: list[str] = []
        token: list[str] | None = None
        depth, i = 1, i + 1
        while i < n:
            ch = text[i]
            if ch == '"':
                end = i + 1
                while end < n and text[end] != '"':
                    end += 2 if text[end] == "\\" else 1
                token = (token or []) + [text[i + 1 : end].replace('\\"', '"')]
                i = end + 1
                continue
            if ch == "#" and token is None:
                newline = text.find("\n", i)
                i = n if newline < 0 else newline
                continue
            if ch == ")" and depth == 1:
                break
            if ch in "()":
                depth += 1 if ch == "(" else -1
            if ch.isspace():
                if token is not None:
                    args.append("".join(token))
                    token = None
            else:
                token = (token or []) + [ch]
            i += 1
        if token is not None:
            args.append("".join(token))
        commands.append((match.group(0).lower(), args, match.start(), i + 1))
        pos = i + 1
    return commands


def parse_commands(text: str) -> list[tuple[str, list[str]]]:
    """The commands of a CMake file as ``(lower-case name, [arguments])`` (see :func:`_scan_commands`)."""
    return [(name, args) for name, args, _, _ in _scan_commands(text)]


def set_variables(text: str) -> dict[str, list[str]]:
    """Every ``set(VAR values...)`` of a CMake file, with ``${VAR}`` references to earlier sets expanded."""
    variables: dict[str, list[str]] = {}

    def expand(value: str) -> str:
        return _VARIABLE.sub(lambda m: ";".join(variables.get(m.group(1), [m.group(0)])), value)

    for name, args in parse_commands(text):
        if name == "set" and args:
            values: list[str] = []
            for arg in args[1:]:
                values.extend(v for v in expand(arg).split(";") if v)
            variables[args[0]] = values
    return variables


def module_names(root: Path = REPO) -> list[str]:
    """The modules of the extension: the ``add_subdirectory`` entries of the top-level CMakeLists.txt."""
    commands = parse_commands((root / "CMakeLists.txt").read_text())
    return [args[0] for name, args in commands if name == "add_subdirectory" and args]


def listed_files(module_dir: Path) -> tuple[list[str], list[str]]:
    """``(scripts, resources)`` as listed in ``module_dir/CMakeLists.txt`` (paths relative to the module)."""
    variables = set_variables((module_dir / "CMakeLists.txt").read_text())
    return variables.get(SCRIPTS_VAR, []), variables.get(RESOURCES_VAR, [])


def files_on_disk(module_dir: Path) -> tuple[list[str], list[str]]:
    """``(scripts, resources)`` that the module folder holds, by the rules in this file's docstring, sorted."""
    scripts, resources = [], []
    for path in sorted(module_dir.rglob("*")):
        rel = path.relative_to(module_dir)
        if not path.is_file() or any(part.startswith(".") or part in _IGNORED_DIRS for part in rel.parts):
            continue
        if path.suffix in _IGNORED_SUFFIXES or path.name == "CMakeLists.txt":
            continue
        (scripts if path.suffix == ".py" else resources).append(rel.as_posix())
    main = f"{module_dir.name}.py"
    if main in scripts:  # the module's own script first, as in Slicer's template
        scripts.remove(main)
        scripts.insert(0, main)
    return scripts, resources


def _cmake_path(path: str, module_name: str) -> str:
    """Write a path with ``${MODULE_NAME}`` where a path component starts with the module's name."""
    parts = path.split("/")
    return "/".join("${MODULE_NAME}" + p[len(module_name) :] if p.startswith(module_name) else p for p in parts)


def render_set(variable: str, paths: list[str], module_name: str) -> str:
    """A ``set(variable ...)`` block, one path per line, in the template's layout."""
    lines = [f"set({variable}"] + [f"  {_cmake_path(p, module_name)}" for p in paths] + ["  )"]
    return "\n".join(lines)


def rewrite(module_dir: Path) -> str:
    """The module's CMakeLists.txt text with both lists replaced by the files on disk."""
    text = (module_dir / "CMakeLists.txt").read_text()
    scripts, resources = files_on_disk(module_dir)
    for variable, paths in ((SCRIPTS_VAR, scripts), (RESOURCES_VAR, resources)):
        spans = [(a, b) for name, args, a, b in _scan_commands(text) if name == "set" and args[:1] == [variable]]
        if len(spans) != 1:
            raise SystemExit(f"{module_dir / 'CMakeLists.txt'}: expected one set({variable} ...), found {len(spans)}")
        start, end = spans[0]
        text = text[:start] + render_set(variable, paths, module_dir.name) + text[end:]
    return text


def differences(module_dir: Path) -> list[str]:
    """Human-readable differences between the CMake lists and the folder (empty when they agree)."""
    listed_scripts, listed_resources = listed_files(module_dir)
    disk_scripts, disk_resources = files_on_disk(module_dir)
    problems = []
    for kind, listed, disk in (
        ("script", listed_scripts, disk_scripts),
        ("resource", listed_resources, disk_resources),
    ):
        for path in sorted(set(disk) - set(listed)):
            problems.append(f"{module_dir.name}: {kind} {path} is not listed in CMakeLists.txt")
        for path in sorted(set(listed) - set(disk)):
            problems.append(f"{module_dir.name}: CMakeLists.txt lists {kind} {path}, which does not exist")
        duplicates = sorted({p for p in listed if listed.count(p) > 1})
        problems.extend(f"{module_dir.name}: {kind} {p} is listed twice" for p in duplicates)
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="module folders to update (default: all modules)")
    parser.add_argument("--check", action="store_true", help="only report differences; exit 1 if there are any")
    parser.add_argument("--root", type=Path, default=REPO, help="repository root (default: this checkout)")
    args = parser.parse_args(argv)
    names = args.modules or module_names(args.root)
    problems = []
    for name in names:
        module_dir = args.root / name
        if args.check:
            problems.extend(differences(module_dir))
            continue
        new_text = rewrite(module_dir)
        cmake = module_dir / "CMakeLists.txt"
        if new_text != cmake.read_text():
            cmake.write_text(new_text)
            print(f"updated {cmake.relative_to(args.root)}")
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
