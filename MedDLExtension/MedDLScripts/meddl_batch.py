"""Run the ``meddl`` command inside 3D Slicer (or any Python): batch runs, conversions, training, the demo.

Inside Slicer, without a window (the MedDL modules load and register their tasks; ``--`` ends Slicer's own
options, everything after it is the ``meddl`` command line)::

    Slicer --no-splash --no-main-window --python-script <MedDLExtension>/MedDLScripts/meddl_batch.py -- \\
        batch ich --input /data/head_cts --output /data/ich_results --resume

With Slicer's Python only (``PythonSlicer``) or a plain Python where MedDL is installed::

    PythonSlicer <MedDLExtension>/MedDLScripts/meddl_batch.py batch ich --input ... --output ...
    python meddl_batch.py batch ich --input ... --output ...

The script puts its parent folder on ``sys.path`` (where ``MedDLLib`` lives, beside the task libraries in an
installed extension; the script sits in a sub-folder so Slicer does not take it for a module), hands the arguments to :func:`MedDLLib.cli.main` and exits with its status
(0 success, 1 error, 2 usage error).
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

#: The tasks this extension ships (as its modules register them when Slicer loads them; the same entries as
#: ``pyproject.toml``'s ``meddl.tasks``). Registered here too, for ``PythonSlicer``, where no module is loaded.
EXTENSION_TASKS = {
    "glioma": "GliomaClassifierLib.cli:TASK",
    "ich": "ICHDetectorLib.cli:TASK",
    "lgg": "LGGSegmenterLib.cli:TASK",
    "lung": "LungSurvivalLib.cli:TASK",
}

#: Slicer application options without a value that may precede the script's own arguments.
SLICER_FLAGS = frozenset({
    "--no-splash", "--no-main-window", "--testing", "--disable-modules", "--disable-builtin-modules",
    "--disable-cli-modules", "--disable-builtin-cli-modules", "--disable-loadable-modules",
    "--disable-builtin-loadable-modules", "--disable-scripted-loadable-modules",
    "--disable-builtin-scripted-loadable-modules", "--disable-python", "--disable-settings",
    "--disable-message-handlers", "--disable-terminal-outputs", "--ignore-slicerrc", "--exit-after-startup",
    "--verbose-module-discovery", "--show-python-interactor", "--skip-launcher", "--enable-qt-testing",
})
#: Slicer application options followed by a value.
SLICER_OPTIONS_WITH_VALUE = frozenset({
    "--python-script", "--python-code", "--additional-module-path", "--additional-module-paths",
    "--modules-to-ignore", "--settings-path", "--tmp-path", "--launcher-additional-settings",
    "--launcher-additional-settings-exclude-groups", "--attach-process",
})


def parse_slicer_argv(argv: Sequence[str]) -> list[str]:
    """The ``meddl`` arguments in a script's ``sys.argv`` (the first item is the script or the program).

    Drops ``argv[0]``, then any Slicer options still in front (with their values, e.g.
    ``--python-script <file>``), then one ``--`` separator; the rest is returned unchanged (a later ``--``
    belongs to the ``meddl`` command line).

    >>> parse_slicer_argv(["meddl_batch.py", "--", "batch", "ich", "--resume"])
    ['batch', 'ich', '--resume']
    >>> parse_slicer_argv(["Slicer", "--no-main-window", "--python-script", "meddl_batch.py", "--", "demo"])
    ['demo']
    """
    args = list(argv[1:])
    i = 0
    while i < len(args):
        token = args[i]
        option, has_value, _ = token.partition("=")
        if token == "--":
            i += 1
            break
        if token in SLICER_FLAGS:
            i += 1
        elif option in SLICER_OPTIONS_WITH_VALUE:
            i += 1 if has_value else 2
        else:
            break
    return args[i:]


def _library_folder() -> str:
    """The folder holding ``MedDLLib``: the parent of this script's folder (``__file__`` may be unset in Slicer)."""
    path = globals().get("__file__") or sys.argv[0]
    return os.path.dirname(os.path.dirname(os.path.abspath(path)))


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``meddl`` with the arguments found in ``argv`` (default: ``sys.argv``); return its exit status."""
    folder = _library_folder()
    if folder not in sys.path:
        sys.path.insert(0, folder)
    from MedDLLib.cli import main as meddl_main
    from MedDLLib.tasks import register_task_entry

    for name, entry in EXTENSION_TASKS.items():  # beside this script in an installed extension
        if os.path.isdir(os.path.join(folder, entry.partition(".")[0])):
            register_task_entry(name, entry)
    return meddl_main(parse_slicer_argv(sys.argv if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
