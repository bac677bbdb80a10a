import pytest
from conftest import load_script

from trl_var.utils import markdown_table, write_markdown_section


letter_errors = load_script("benchmarks/letter_errors.py")


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


def test_table_and_report_section(tmp_path):
    rows = [{"model": "m", "prompts": "heldout", **letter_errors.tally(["MAH", "MNH"], ["MAH", "MAH"])}]
    text = letter_errors.table(rows)
    assert text.splitlines()[0].endswith("| wrong letter 1 | wrong letter 2 | wrong letter 3 |")
    assert text.splitlines()[2] == "| `m` | heldout | 2 | 0.50 | 0.00 | 0.00 | 0.50 | 0.00 | 0.50 | 0.00 |"
    report = tmp_path / "BENCHMARKS.md"
    report.write_text("intro\n<!-- letter-errors:start -->\nold\n<!-- letter-errors:end -->\nrest\n")
    write_markdown_section(str(report), "letter-errors", text, "letter-errors (`benchmarks/letter_errors.py`)")
    assert report.read_text() == f"intro\n<!-- letter-errors:start -->\n{text}\n<!-- letter-errors:end -->\nrest\n"


def test_markdown_table_and_a_new_section_appended_under_its_heading(tmp_path):
    assert markdown_table(["a", "b"], [[1, "x"], [2.5, ""]]) == "| a | b |\n|---|---|\n| 1 | x |\n| 2.5 |  |"
    report = tmp_path / "new.md"  # a file that does not exist yet
    write_markdown_section(str(report), "study", "one", "study (`benchmarks/ablation.py --name study`)")
    write_markdown_section(str(report), "other", "two", "other")
    write_markdown_section(str(report), "study", "three", "study")  # replaced in place, not appended again
    expected = (
        "\n## study (`benchmarks/ablation.py --name study`)\n\n<!-- study:start -->\nthree\n<!-- study:end -->\n"
    )
    assert report.read_text() == expected + "\n## other\n\n<!-- other:start -->\ntwo\n<!-- other:end -->\n"


def test_no_samples_is_refused_by_name(capsys):
    with pytest.raises(SystemExit):
        letter_errors.main(["--samples", "0"])
    assert "--samples must be >= 1, got 0" in capsys.readouterr().err
