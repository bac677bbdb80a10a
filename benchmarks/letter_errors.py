"""
Where the toy's text rendering fails: for each model, Tesseract's reads of sampled images sorted into exact, empty,
wrong length, and same-length reads with the wrong letters counted per position. It tells a model that cannot bind a
letter to its place (one position dominates) from one that draws unreadable glyphs (empty / wrong-length reads).

    python benchmarks/letter_errors.py                                       # the shipped model, held-out prompts
    python benchmarks/letter_errors.py --models recipes/models/var-tiny-text-render outputs/text-render-tiny \
        --prompts validation --samples 2 --json benchmarks/results/letter_errors.json

Sampling as in evaluation (the recipe's guidance 3, top-k 2 / top-p 0.9); `--samples` images per prompt, seeded.
"""

import argparse
import collections
import json
import os
import sys

import torch
from transformers import AutoModel, AutoTokenizer

from trl_var import VARGRPOConfig, VARPipeline
from trl_var.evaluation import score_prompts


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ablation  # noqa: E402  (the evaluation prompts and the recipe's sampling)


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


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=[ablation.SHIPPED_MODEL], help="Folders or Hub ids.")
    parser.add_argument("--prompts", choices=["heldout", "validation"], default="heldout")
    parser.add_argument("--samples", type=int, default=2, help="Images per prompt (seeds 0..samples-1).")
    parser.add_argument("--json", default=None, help="Write the table as JSON here.")
    args = parser.parse_args(argv)
    torch.set_num_threads(os.cpu_count())
    recipe = ablation.load_recipe()
    sampling = VARGRPOConfig(**ablation.recipe_fields(recipe)).sampling_kwargs(evaluation=True)
    num = len(ablation.HELDOUT_WORDS) if args.prompts == "heldout" else ablation.NUM_VALIDATION_WORDS
    prompts, targets = ablation.evaluation_prompts(args.prompts, num, recipe.get("word_length", 3))
    rows = []
    for name in args.models:
        tokenizer = AutoTokenizer.from_pretrained(name, padding_side="left")
        pipeline = VARPipeline(AutoModel.from_pretrained(name).eval(), tokenizer)
        predictions = []
        for seed in range(args.samples):
            predictions += score_prompts(pipeline, prompts, targets, seed=seed, **sampling)["predictions"]
        rows.append({"model": name, "prompts": args.prompts, **tally(predictions, targets * args.samples)})
    print(f"{'model':40} {'reads':>5} {'exact':>6} {'empty':>6} {'length':>7} {'letters':>8}   wrong letter at 1/2/3")
    for row in rows:
        at = " / ".join(f"{x:.2f}" for x in row["wrong_letter_at"])
        print(
            f"{os.path.basename(row['model'].rstrip('/')):40} {row['reads']:5d} {row['exact']:6.2f} {row['empty']:6.2f} "
            f"{row['length']:7.2f} {row['letters']:8.2f}   {at}"
        )
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
