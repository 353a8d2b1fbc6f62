"""Exceptions MedDL raises for expected problems with the user's input.

Every expected failure (a bad file, a missing tag, a series that is not one volume) is a :class:`MedDLError`
whose message names the file and the problem. The ``meddl`` command prints that message on one line and exits
non-zero; it never shows a traceback for these.
"""

from __future__ import annotations


class MedDLError(Exception):
    """Base class of the errors that are the input's fault, not a bug in MedDL."""


class DicomError(MedDLError):
    """A DICOM file or series cannot be read as one volume (names the file and the tag or problem)."""


class InputError(MedDLError):
    """An input (file, node, argument) is not what the called function needs."""


class ModelError(MedDLError):
    """A model package is missing, invalid, tampered with or incompatible."""


class Cancelled(MedDLError):
    """The user (or a script's ``cancel`` callback) stopped the computation; nothing was added to the scene."""
