"""check_labels: the range test that spares the scan of the values refuses exactly what the scan refuses."""

from __future__ import annotations

import re

import numpy as np
import pytest

from MedDLLib.errors import InputError
from MedDLLib.outputs import check_labels


def _spec(values):
    return {int(v): (f"segment {v}", (1.0, 0.0, 0.0)) for v in values}


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.uint16, np.int32, np.int64])
@pytest.mark.parametrize("seed", range(6))
def test_check_labels_refuses_exactly_the_values_without_a_segment(dtype, seed):
    rng = np.random.default_rng(seed)
    low = -3 if np.issubdtype(dtype, np.signedinteger) else 0
    labels = rng.integers(low, 6, size=(4, 7, 5)).astype(dtype)
    segments = _spec(v for v in range(1, 7) if rng.random() < 0.7)
    unknown = sorted(set(np.unique(labels).tolist()) - {0} - set(segments))
    if unknown:
        with pytest.raises(InputError, match=re.escape(f"label values {unknown} have no segment")):
            check_labels(labels, segments, "x")
    else:
        out = check_labels(labels, segments, "x")
        assert out.dtype == np.uint8 and np.array_equal(out, labels) and not np.shares_memory(out, labels)


def test_check_labels_values_far_apart_and_gaps():
    labels = np.zeros((2, 3, 4), np.int32)
    labels[0, 0, 0], labels[1, 2, 3] = 1, 9000  # a range too wide for the range test: the values are scanned
    assert check_labels(labels, _spec([1, 9000]), "x").dtype == np.uint16
    with pytest.raises(InputError, match=r"\[9000\]"):
        check_labels(labels, _spec([1]), "x")
    labels[1, 2, 3] = 3  # 2 missing from the segments but absent from the labels: accepted
    assert np.array_equal(check_labels(labels, _spec([1, 3]), "x"), labels)
    with pytest.raises(InputError, match=r"\[-1\]"):
        check_labels(np.full((2, 2), -1, np.int8), _spec([1]), "x")
    assert check_labels(np.zeros((0, 3), np.uint8), _spec([1]), "x").shape == (0, 3)
    assert check_labels(np.ones((2, 2), bool), _spec([1]), "x").dtype == np.uint8
