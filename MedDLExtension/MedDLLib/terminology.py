"""What each MedDL segment is, in SNOMED CT: the codes written into DICOM SEG and ``.seg.nrrd`` files.

A segment is described as DICOM (PS3.3 C.8.20.4, PS3.16 CID 7150/7151) and Slicer describe it: a
*category* (anatomical structure, morphologically altered structure), a *type* (lung, hemorrhage, neoplasm),
an optional *type modifier* (right, left) and an optional *anatomic region* (brain). The codes are those of the
terminologies Slicer loads by default and of TotalSegmentator, so Slicer, OHIF and a PACS show the standard
names:

* Slicer: ``Modules/Loadable/Terminologies/Resources/SegmentationCategoryTypeModifier-SlicerGeneralAnatomy.json``
  (lungs, lobes, hemorrhage, oedema, necrosis), ``...-DICOM-Master.json`` (neoplasm) and
  ``AnatomicRegionAndModifier-DICOM-Master.json`` (brain), github.com/Slicer/Slicer (commit 583e9b37, 2026-08).
* TotalSegmentator's Slicer module: ``TotalSegmentator/Resources/totalsegmentator_snomed_mapping.csv``,
  github.com/lassoan/SlicerTotalSegmentator: the same lung and lobe codes; ``intracerebral_hemorrhage`` =
  hemorrhage in the brain; tumours as ``Neoplasm`` with the organ as anatomic region (``liver_tumor``).
* Glioma sub-regions (BraTS labels): DICOM PS3.16 CID 7168 "Brain Lesion Segmentation Types With Necrosis"
  and CID 7169 "... Without Necrosis": necrosis (also used for the non-enhancing core) SCT 6574001, oedema
  SCT 79654002, enhancing lesion NCIt C113842 (SNOMED CT has no concept for it; the standard uses NCIt).
  Tumour core and whole tumour are BraTS unions: neoplasm (SCT 108369006) and lesion (SCT 52988006) of the
  brain.

Choices where the sources leave room: the LGG tumour is a neoplasm of the brain (a glioma is one; SNOMED's
"glioma" morphology is in none of these terminologies, so Slicer would not find it); the ICH "suspected
hemorrhage" is hemorrhage with region brain, as TotalSegmentator codes intracerebral hemorrhage (MedDL's region
is blood density inside the brain mask).

Slicer stores a segment's terminology as the ``TerminologyEntry`` tag, serialised as
``context~category~type~typeModifier~regionContext~region~regionModifier`` with each code
``scheme^value^meaning`` (``vtkSlicerTerminologiesModuleLogic::SerializeTerminologyEntry``); the ``.seg.nrrd``
header carries it as ``Segment<N>_Tags:=...|TerminologyEntry:<entry>|``. :func:`slicer_terminology_entry`
builds that string, :func:`apply_to_segmentation` sets it on the segments of a segmentation node before it is
saved, :func:`write_seg_nrrd_terminology` sets it in the header of a ``.seg.nrrd`` already written.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from .errors import InputError

#: Terminology context names exactly as Slicer's default terminology files name themselves.
SLICER_GENERAL_ANATOMY = "Segmentation category and type - 3D Slicer General Anatomy list"
DICOM_MASTER = "Segmentation category and type - DICOM master list"
ANATOMIC_DICOM_MASTER = "Anatomic codes - DICOM master list"


@dataclasses.dataclass(frozen=True)
class Code:
    """One coded concept: coding scheme designator (``SCT`` = SNOMED CT, ``NCIt``), code value, code meaning."""

    scheme: str
    value: str
    meaning: str

    def slicer(self) -> str:
        """``scheme^value^meaning`` (Slicer's serialisation of one code)."""
        return f"{self.scheme}^{self.value}^{self.meaning}"


# Categories (CID 7150)
ANATOMICAL_STRUCTURE = Code("SCT", "123037004", "Anatomical Structure")
ALTERED_STRUCTURE = Code("SCT", "49755003", "Morphologically Altered Structure")
# Laterality modifiers (CID 244)
RIGHT = Code("SCT", "24028007", "Right")
LEFT = Code("SCT", "7771000", "Left")
# Anatomic region
BRAIN = Code("SCT", "12738006", "Brain")


@dataclasses.dataclass(frozen=True)
class SegmentTerm:
    """The coded meaning of one segment (see the module docstring for the sources).

    Attributes:
        category: segmented property category (CID 7150).
        type: segmented property type.
        type_modifier: e.g. :data:`RIGHT` / :data:`LEFT`, or None.
        region: anatomic region the type lies in (e.g. :data:`BRAIN` for a hemorrhage), or None.
        rgb: recommended display colour (0-255) from the terminology, or None where it gives none.
        context: the Slicer terminology context (file) that lists this category/type.
    """

    category: Code
    type: Code
    type_modifier: Code | None = None
    region: Code | None = None
    rgb: tuple[int, int, int] | None = None
    context: str = SLICER_GENERAL_ANATOMY

    @property
    def meaning(self) -> str:
        """Readable name from the codes: ``Lung, Right``, ``Hemorrhage (Brain)``."""
        text = self.type.meaning + (f", {self.type_modifier.meaning}" if self.type_modifier else "")
        return text + (f" ({self.region.meaning})" if self.region else "")


def _lung(code: str, meaning: str, side: Code | None, rgb: tuple[int, int, int]) -> SegmentTerm:
    return SegmentTerm(ANATOMICAL_STRUCTURE, Code("SCT", code, meaning), side, rgb=rgb)


#: Every segment MedDL writes, by a stable key.
TERMS: dict[str, SegmentTerm] = {
    # LungSurvival lungs and (MODELS helper) lobes: Slicer General Anatomy / TotalSegmentator.
    "right_lung": _lung("39607008", "Lung", RIGHT, (197, 165, 145)),
    "left_lung": _lung("39607008", "Lung", LEFT, (197, 165, 145)),
    "right_upper_lobe": _lung("45653009", "Upper lobe of lung", RIGHT, (172, 138, 115)),
    "right_middle_lobe": _lung("72481006", "Middle lobe of right lung", None, (202, 164, 140)),
    "right_lower_lobe": _lung("90572001", "Lower lobe of lung", RIGHT, (224, 186, 162)),
    "left_upper_lobe": _lung("45653009", "Upper lobe of lung", LEFT, (172, 138, 115)),
    "left_lower_lobe": _lung("90572001", "Lower lobe of lung", LEFT, (224, 186, 162)),
    # ICHDetector: TotalSegmentator's intracerebral_hemorrhage.
    "hemorrhage": SegmentTerm(ALTERED_STRUCTURE, Code("SCT", "50960005", "Hemorrhage"), region=BRAIN,
                              rgb=(188, 65, 28)),
    # LGGSegmenter: a glioma is a neoplasm of the brain (DICOM master list; colour of TotalSegmentator's).
    "brain_neoplasm": SegmentTerm(ALTERED_STRUCTURE, Code("SCT", "108369006", "Neoplasm"), region=BRAIN,
                                  rgb=(144, 238, 144), context=DICOM_MASTER),
    # Glioma sub-regions (BraTS): DICOM CID 7168/7169.
    "enhancing_tumour": SegmentTerm(ALTERED_STRUCTURE, Code("NCIt", "C113842", "Enhancing Lesion"), region=BRAIN,
                                    context=DICOM_MASTER),
    "necrosis": SegmentTerm(ALTERED_STRUCTURE, Code("SCT", "6574001", "Necrosis"), region=BRAIN,
                            rgb=(216, 191, 216)),
    "oedema": SegmentTerm(ALTERED_STRUCTURE, Code("SCT", "79654002", "Edema"), region=BRAIN, rgb=(140, 224, 228)),
    "tumour_core": SegmentTerm(ALTERED_STRUCTURE, Code("SCT", "108369006", "Neoplasm"), region=BRAIN,
                               rgb=(144, 238, 144), context=DICOM_MASTER),
    "whole_tumour": SegmentTerm(ALTERED_STRUCTURE, Code("SCT", "52988006", "Lesion"), region=BRAIN,
                                rgb=(255, 200, 50), context=DICOM_MASTER),
}

#: Slicer's default for a segment nobody described ("Tissue"): what an unknown name gets.
TISSUE = SegmentTerm(Code("SCT", "85756007", "Tissue"), Code("SCT", "85756007", "Tissue"), rgb=(128, 174, 128))

#: Segment names used by the tasks (lower case) -> key in :data:`TERMS`. A task adding a segment adds its
#: name here; ``Testing/test_terminology.py`` fails for a task segment without an entry.
NAMES: dict[str, str] = {
    "right lung": "right_lung", "left lung": "left_lung",
    "right upper lobe": "right_upper_lobe", "right middle lobe": "right_middle_lobe",
    "right lower lobe": "right_lower_lobe", "left upper lobe": "left_upper_lobe",
    "left lower lobe": "left_lower_lobe",
    "upper lobe of right lung": "right_upper_lobe", "middle lobe of right lung": "right_middle_lobe",
    "lower lobe of right lung": "right_lower_lobe", "upper lobe of left lung": "left_upper_lobe",
    "lower lobe of left lung": "left_lower_lobe",
    "suspected hemorrhage": "hemorrhage", "hemorrhage": "hemorrhage", "haemorrhage": "hemorrhage",
    "intracranial hemorrhage": "hemorrhage",
    "tumour": "brain_neoplasm", "tumor": "brain_neoplasm", "glioma": "brain_neoplasm",
    "enhancing tumour": "enhancing_tumour", "enhancing tumor": "enhancing_tumour", "et": "enhancing_tumour",
    "necrosis": "necrosis", "necrotic core": "necrosis", "non-enhancing tumour core": "necrosis", "ncr": "necrosis",
    "oedema": "oedema", "edema": "oedema", "ed": "oedema",
    "tumour core": "tumour_core", "tumor core": "tumour_core", "tc": "tumour_core",
    "whole tumour": "whole_tumour", "whole tumor": "whole_tumour", "wt": "whole_tumour",
}


def term_for(name: str) -> SegmentTerm | None:
    """The term of a segment called ``name`` (case and surrounding blanks ignored), None if it has none."""
    key = NAMES.get(" ".join(name.lower().split()))
    return TERMS[key] if key else None


def segment_spec(names: Sequence[str], colours: Mapping[str, tuple[int, int, int]] | None = None
                 ) -> dict[int, tuple[str, tuple[float, float, float]]]:
    """MedDL's segment spec ``{value: (name, (r, g, b) 0-1)}`` for ``names`` (values 1..n in order), colours from
    their terms (``colours``: name -> 0-255 colour for a term that recommends none).

    Raises:
        KeyError: a name without a term, or without a colour (a task declares only coded segments).
    """
    out = {}
    for value, name in enumerate(names, start=1):
        term = term_for(name)
        rgb = term.rgb if term is not None and term.rgb is not None else (colours or {}).get(name)
        if term is None or rgb is None:
            raise KeyError(f"no coded term with a colour for segment {name!r} in MedDLLib.terminology")
        out[value] = (name, tuple(round(c / 255.0, 4) for c in rgb))
    return out


def slicer_terminology_entry(term: SegmentTerm) -> str:
    """Slicer's ``TerminologyEntry`` string for ``term`` (7 ``~``-separated fields, codes ``scheme^value^meaning``).

    >>> slicer_terminology_entry(TERMS["left_lung"]).split("~")[1:4]
    ['SCT^123037004^Anatomical Structure', 'SCT^39607008^Lung', 'SCT^7771000^Left']
    """
    empty = "^^"
    return "~".join([
        term.context, term.category.slicer(), term.type.slicer(),
        term.type_modifier.slicer() if term.type_modifier else empty,
        ANATOMIC_DICOM_MASTER, term.region.slicer() if term.region else empty, empty,
    ])


def parse_slicer_terminology_entry(entry: str) -> dict[str, Code | str | None]:
    """Inverse of :func:`slicer_terminology_entry`: ``{"context", "category", "type", "type_modifier",
    "region_context", "region", "region_modifier"}`` (codes as :class:`Code`, empty ones None).

    Raises:
        ValueError: not 7 fields, or a code that is not ``scheme^value^meaning``.
    """
    parts = entry.split("~")
    if len(parts) != 7:
        raise ValueError(f"a Slicer terminology entry has 7 '~'-separated fields, got {len(parts)}: {entry!r}")

    def code(text: str) -> Code | None:
        fields = text.split("^")
        if len(fields) != 3:
            raise ValueError(f"a terminology code is 'scheme^value^meaning', got {text!r}")
        return Code(*fields) if any(fields) else None

    keys = ("category", "type", "type_modifier")
    out: dict[str, Code | str | None] = {"context": parts[0], **{k: code(v) for k, v in zip(keys, parts[1:4])}}
    out.update(region_context=parts[4], region=code(parts[5]), region_modifier=code(parts[6]))
    return out


def _tags_with_entry(tags: str, entry: str) -> str:
    """A ``Segment<N>_Tags`` value (``key:value|key:value|``) with ``TerminologyEntry`` set to ``entry``."""
    items = [t for t in tags.split("|") if t and not t.startswith("TerminologyEntry:")]
    return "|".join([*items, f"TerminologyEntry:{entry}"]) + "|"


def segment_tags(name: str, terms: Mapping[str, SegmentTerm] | None = None) -> str:
    """The ``Segment<N>_Tags`` header value of a segment called ``name`` for a ``.seg.nrrd`` written without
    Slicer: ``TerminologyEntry:<entry>|``, or ``|`` (no tags; Slicer then assigns its default) without a term."""
    term = terms.get(name) if terms is not None else term_for(name)
    return _tags_with_entry("", slicer_terminology_entry(term)) if term is not None else "|"


def apply_to_segmentation(segmentation_node: Any, terms: Mapping[str, SegmentTerm] | None = None) -> list[str]:
    """Set the ``TerminologyEntry`` of every segment of a ``vtkMRMLSegmentationNode`` from its name.

    Args:
        segmentation_node: the node (modified: only the segments' terminology tags; call before saving it).
        terms: segment name -> term; default :func:`term_for` of each segment's name.

    Returns:
        the names of the segments left without a term (they keep Slicer's default "Tissue").
    """
    segmentation = segmentation_node.GetSegmentation()
    missing = []
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        name = segment.GetName()
        term = terms.get(name) if terms is not None else term_for(name)
        if term is None:
            missing.append(name)
            continue
        segment.SetTerminology(slicer_terminology_entry(term))
    return missing


_SEGMENT_NAME = re.compile(r"^Segment(\d+)_Name:=(.*)$")


def write_seg_nrrd_terminology(path: str | Path, terms: Mapping[str, SegmentTerm] | None = None) -> list[str]:
    """Set each segment's ``TerminologyEntry`` in the header of the ``.seg.nrrd`` at ``path`` (atomically).

    Only the header lines ``Segment<N>_Tags`` change (one is added where missing); the data part is copied
    byte for byte. Segments are matched by ``Segment<N>_Name``.

    Args:
        path: a ``.seg.nrrd`` written by Slicer (attached header: text lines up to the first empty line).
        terms: segment name -> term; default :func:`term_for` of each name.

    Returns:
        the names of the segments left without a term.

    Raises:
        InputError: not an NRRD file, or no segment in its header.
    """
    from .io import atomic_path

    path = Path(path)
    raw = path.read_bytes()
    end = raw.find(b"\n\n")
    if not raw.startswith(b"NRRD") or end < 0:
        raise InputError(f"{path}: not an NRRD file with an attached header (no 'NRRD' magic or no blank line)")
    lines = raw[:end].decode("latin-1").split("\n")
    names: dict[str, str] = {}
    for line in lines:
        match = _SEGMENT_NAME.match(line)
        if match:
            names[match.group(1)] = match.group(2)
    if not names:
        raise InputError(f"{path}: no Segment<N>_Name field in the header: not a Slicer segmentation")
    entries: dict[str, str] = {}
    missing = []
    for index, name in names.items():
        term = terms.get(name) if terms is not None else term_for(name)
        if term is None:
            missing.append(name)
        else:
            entries[index] = slicer_terminology_entry(term)
    out, seen = [], set()
    for line in lines:
        match = re.match(r"^Segment(\d+)_Tags:=(.*)$", line)
        if match and match.group(1) in entries:
            line = f"Segment{match.group(1)}_Tags:={_tags_with_entry(match.group(2), entries[match.group(1)])}"
            seen.add(match.group(1))
        out.append(line)
    out.extend(f"Segment{i}_Tags:={_tags_with_entry('', e)}" for i, e in entries.items() if i not in seen)
    with atomic_path(path, ".seg.nrrd") as tmp:
        tmp.write_bytes("\n".join(out).encode("latin-1") + raw[end:])
    return missing

