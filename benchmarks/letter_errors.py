"""
Where the toy's text rendering fails: for each model, Tesseract's reads of sampled images sorted into exact, empty,
wrong length, and same-length reads with the wrong letters counted per position. It tells a model that cannot bind a
letter to its place (one position dominates) from one that draws unreadable glyphs (empty / wrong-length reads).

    python benchmarks/letter_errors.py                                       # the shipped model, validation prompts
    python benchmarks/letter_errors.py --models recipes/models/var-tiny-text-render outputs/text-render-tiny \
        --json benchmarks/results/letter_errors.json --report BENCHMARKS.md
                                                                             # before and after `make train`

Sampling as in evaluation (the recipe's guidance 3, top-k 2 / top-p 0.9); `--samples` images per prompt, seeded.
"""

import argparse
import collections
import json
import os

import torch
from transformers import AutoModel, AutoTokenizer
from trl import TrlParser

from trl_var import VARGRPOConfig, VARPipeline
from trl_var.data import make_heldout_dataset, make_word_prompts, validation_words
from trl_var.evaluation import score_prompts
from trl_var.utils import markdown_table, write_markdown_section


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE_CONFIG = os.path.join(ROOT, "recipes", "configs", "text_render_tiny.yaml")
SHIPPED_MODEL = os.path.join(ROOT, "recipes", "models", "var-tiny-text-render")


def classify(prediction: str, target: str) -> tuple[str, list[int]]:
    """The kind of a read (`exact`, `empty`, `length`, `letters`) and the 0-based positions of its wrong letters."""
    read = prediction.replace(" ", "")
    if read == target:
        return "exact", []
    if not read:
        return "empty", []
    if len(read) != len(target):
        return "length", []
    return "letters", [i for i, (a, b) in enumerate(zip(read, target)) if a != b]


def tally(predictions: list[str], targets: list[str]) -> dict:
    """Fractions of reads per kind and, per position, of reads with that letter wrong (among all reads)."""
    kinds, positions = collections.Counter(), collections.Counter()
    for prediction, target in zip(predictions, targets, strict=True):
        kind, wrong = classify(prediction, target)
        kinds[kind] += 1
        positions.update(wrong)
    n = len(targets)
    length = max(len(t) for t in targets)
    return {
        "reads": n,
        **{kind: kinds[kind] / n for kind in ("exact", "empty", "length", "letters")},
        "wrong_letter_at": [positions[i] / n for i in range(length)],
    }


def table(rows: list[dict]) -> str:
    """A Markdown table: the fraction of reads of each kind, and of reads with a wrong letter at each position."""
    header = ["model", "prompts", "reads", "exact", "empty", "wrong length", "wrong letters"]
    header += [f"wrong letter {i + 1}" for i in range(len(rows[0]["wrong_letter_at"]))]
    cells = [
        [f"`{row['model']}`", row["prompts"], row["reads"]]
        + [f"{row[kind]:.2f}" for kind in ("exact", "empty", "length", "letters")]
        + [f"{x:.2f}" for x in row["wrong_letter_at"]]
        for row in rows
    ]
    return markdown_table(header, cells)


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=[SHIPPED_MODEL], help="Folders or Hub ids.")
    parser.add_argument(
        "--prompts",
        choices=["heldout", "validation"],
        default="validation",
        help="validation (default): a diagnosis guides the next setting, so it reads the words settings are chosen on.",
    )
    parser.add_argument("--samples", type=int, default=2, help="Images per prompt (seeds 0..samples-1).")
    parser.add_argument("--json", default=None, help="Write the table as JSON here.")
    parser.add_argument(
        "--report", default=None, help="Markdown file whose <!-- letter-errors:start/end --> markers get the table."
    )
    args = parser.parse_args(argv)
    if args.samples < 1:
        parser.error(f"--samples must be >= 1, got {args.samples}.")
    torch.set_num_threads(os.cpu_count())
    # the recipe's evaluation sampling, read as the recipe reads its config (its own keys skipped)
    (recipe,) = TrlParser(VARGRPOConfig).parse_args_and_config(
        ["--config", RECIPE_CONFIG], fail_with_unknown_args=False
    )
    sampling = recipe.sampling_kwargs(evaluation=True)
    data = make_heldout_dataset() if args.prompts == "heldout" else make_word_prompts(validation_words())
    prompts, targets = list(data["prompt"]), list(data["text"])
    rows = []
    for name in args.models:
        tokenizer = AutoTokenizer.from_pretrained(name, padding_side="left")
        pipeline = VARPipeline(AutoModel.from_pretrained(name).eval(), tokenizer)
        predictions = []
        for seed in range(args.samples):
            predictions += score_prompts(pipeline, prompts, targets, seed=seed, **sampling)["predictions"]
        shown = os.path.relpath(name, ROOT) if os.path.isdir(name) else name
        rows.append({"model": shown, "prompts": args.prompts, **tally(predictions, targets * args.samples)})
    text = table(rows)
    print(text)
    if args.report:
        write_markdown_section(args.report, "letter-errors", text, "letter-errors (`benchmarks/letter_errors.py`)")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
