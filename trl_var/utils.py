"""Markdown tables and report sections: how the evaluation, the model card and the benchmarks write their results."""

import os
from collections.abc import Sequence


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table: the header row, the `|---|` rule, then one line per row (cells as `str`)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_markdown_section(path: str, name: str, text: str, heading: str) -> None:
    """
    Put `text` between the `<!-- name:start -->` and `<!-- name:end -->` markers of the Markdown file `path`, in place,
    so that a new run of a benchmark replaces its own table and nothing else; where the markers are missing (or the
    file is), append a section titled `heading` that holds them.
    """
    document = ""
    if os.path.exists(path):
        with open(path) as f:
            document = f.read()
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if start in document:
        head, rest = document.split(start, 1)
        document = head + start + "\n" + text + "\n" + end + rest.split(end, 1)[1]
    else:
        document += f"\n## {heading}\n\n{start}\n{text}\n{end}\n"
    with open(path, "w") as f:
        f.write(document)
