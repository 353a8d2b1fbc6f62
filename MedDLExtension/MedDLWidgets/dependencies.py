"""Install MedDL's Python dependencies inside Slicer on the first Apply (never at import).

torch comes from the PyTorch extension (``PyTorchUtils``), which picks the build that matches the GPU driver;
the other packages come from ``MedDLExtension/Resources/requirements.txt`` through
``slicer.packaging.pip_ensure`` (Slicer >= 5.12), or ``slicer.util.pip_install`` after a confirmation on older
Slicer versions. What is missing is decided by :func:`MedDLLib.guisupport.dependency_plan` (tested outside Slicer).
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

import slicer
from slicer.i18n import tr as _

from MedDLLib import guisupport

#: The shared requirements file (beside this package in the source tree and in an installed extension).
REQUIREMENTS_FILE = Path(__file__).resolve().parents[1] / "Resources" / "requirements.txt"

_checked = False  # everything was found installed once in this session: later Applies skip the check


def ensureDependencies(requester: str = "MedDL", requirementsFile: Path = REQUIREMENTS_FILE) -> bool:
    """Make sure torch and the packages of ``requirementsFile`` are installed; ask before installing anything.

    Args:
        requester: the module's name, shown in the confirmation dialogs.
        requirementsFile: the pip requirements (default: the extension's ``Resources/requirements.txt``).

    Returns:
        True when everything is installed (the caller may import torch/monai now); False when the user declined
        (nothing was installed; the caller stops without computing).

    Raises:
        RuntimeError: the PyTorch extension is missing, an installation failed, or packages are still missing
            afterwards (the message says which).
    """
    global _checked
    if _checked:
        return True
    plan = guisupport.dependency_plan(requirementsFile)
    if plan.satisfied:
        _refuseStaleImports(requirementsFile)  # installed on disk (an earlier session), an older one imported
        _checked = True
        return True
    logging.info(f"{requester}: {plan.describe()}")
    if slicer.app.testingEnabled():
        raise RuntimeError(
            _("Missing Python packages (not installed while testing): {what}").format(what=plan.describe())
        )

    if plan.torch and not _installTorch(plan):
        return False
    if plan.packages and not _installPackages(plan, requester):
        return False

    importlib.invalidate_caches()
    _refuseStaleImports(requirementsFile)
    remaining = guisupport.dependency_plan(requirementsFile)
    if not remaining.satisfied:
        raise RuntimeError(
            _("Still missing after installation: {what} Restart Slicer and try again.").format(
                what=remaining.describe()
            )
        )
    _checked = True
    return True


def _refuseStaleImports(requirementsFile: Path) -> None:
    """Raise when a package is installed in the right version but an older one is the one imported in this
    process (Python keeps the first import until Slicer restarts): never report success while it is in use."""
    stale = guisupport.stale_imports(requirementsFile)
    if stale:
        raise RuntimeError(
            _("Installed, but this Slicer session still uses {what}: restart Slicer and Apply again.").format(
                what=", ".join(stale)
            )
        )


def _installTorch(plan: guisupport.DependencyPlan) -> bool:
    try:
        import PyTorchUtils
    except ImportError as exc:
        raise RuntimeError(
            _(
                "MedDL needs the PyTorch extension: install 'PyTorch' with the Extensions Manager, restart Slicer and "
                "try again."
            )
        ) from exc
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
        askConfirmation=True, torchVersionRequirement=plan.torch_version_requirement()
    )
    if torch is None:
        logging.info("Installation of PyTorch declined")
        return False
    return True


def _installPackages(plan: guisupport.DependencyPlan, requester: str) -> bool:
    packages = list(plan.packages)
    try:
        import slicer.packaging as packaging
    except ImportError:
        packaging = None
    if packaging is not None and hasattr(packaging, "pip_ensure"):
        try:
            packaging.pip_ensure(packages, requester=requester)
        except RuntimeError as exc:
            if "declined" in str(exc).lower():
                logging.info(f"{requester}: installation of {packages} declined")
                return False
            raise
        return True
    # Slicer < 5.12: confirm, then pip_install
    if not slicer.util.confirmOkCancelDisplay(
        plan.describe(), windowTitle=_("{requester}: install Python packages").format(requester=requester)
    ):
        return False
    slicer.util.pip_install(packages)
    return True
