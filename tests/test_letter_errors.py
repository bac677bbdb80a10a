import os
import sys

import pytest


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import letter_errors  # noqa: E402


@pytest.mark.parametrize(
    "prediction, target, expected",
    [
        ("MAH", "MAH", ("exact", [])),
        ("M A H", "MAH", ("exact", [])),  # Tesseract's spaces between letters do not count
        ("", "MAH", ("empty", [])),
        ("MAHH", "MAH", ("length", [])),
        ("MNH", "MAH", ("letters", [1])),
        ("NAX", "MAH", ("letters", [0, 2])),
    ],
)
def test_classify(prediction, target, expected):
    assert letter_errors.classify(prediction, target) == expected


def test_tally_gives_fractions_of_all_reads():
    table = letter_errors.tally(["MAH", "MNH", "", "MAHH", "KNH"], ["MAH"] * 5)
    assert table == {
        "reads": 5,
        "exact": 0.2,
        "empty": 0.2,
        "length": 0.2,
        "letters": 0.4,
        "wrong_letter_at": [0.2, 0.4, 0.0],
    }
