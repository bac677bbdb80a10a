"""
Text-rendering evaluation of a VAR text-to-image model: CVTG-2K's Word Accuracy, NED and CLIPScore, per number of text
regions and overall, as in Table 1 of "VAR RL Done Right" (arXiv 2601.02256).

    python recipes/evaluate_text_render.py --model <folder or Hub id> --dataset <CVTG-2K folder, zip or Hub id>
    python recipes/evaluate_text_render.py --model <...> --dataset prompts.jsonl --dataset_format prompts
    python recipes/evaluate_text_render.py --config my_eval.yaml          # any option below, as YAML
    python recipes/evaluate_text_render.py --help                         # every option
    make evaluate MODEL=outputs/text-render-tiny    # the toy's 100 held-out prompts (recipes/data/), Tesseract

Without --model it evaluates the tiny pretrained model shipped in recipes/models/var-tiny-text-render, and then, without
--dataset, on the toy's 100 held-out prompts (a 64 px one-word model has nothing to show on CVTG-2K); a model you name
is evaluated on CVTG-2K unless you name a dataset.

It samples one image per prompt with the model's recommended sampling (its generation_config.json; without one, the
paper's evaluation sampling: guidance 5, constant schedule, temperature 1, top-k 2, top-p 0.9; any option below
overrides it), reads each image with Tesseract (or PP-OCR: `--ocr_backend ppocr`) and writes to `--output_dir`:

    results.md / results.json   the table (also printed)
    samples.png                 the first samples, captioned with their word accuracy and prompt
    samples.jsonl, images/      every sample: prompt, targets, OCR words, scores, image

A rerun with the same options resumes: the samples already in samples.jsonl are not generated again. CLIPScore needs
`--clip_model` (the benchmark uses openai/clip-vit-large-patch14); without it the column is left empty. The metrics are
the benchmark's (see trl_var/metrics/functional.py), the OCR engine is not: Tesseract or PP-OCRv6-small via RapidOCR
here (results.json names it), PaddleOCR in the papers, so compare models evaluated here, by the same engine, with each
other rather than with the papers' absolute numbers.
"""

import argparse
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers import set_seed
from trl import TrlParser

from trl_var.data import CVTG2K_REPO_ID, load_cvtg2k, load_prompt_dataset
from trl_var.evaluation import evaluate_text_rendering, format_results_table, load_pipeline
from trl_var.models import SAMPLING_ARGUMENTS


logger = logging.getLogger(__name__)

RECIPES = os.path.dirname(os.path.abspath(__file__))
SHIPPED_MODEL = os.path.join(RECIPES, "models", "var-tiny-text-render")
# The toy task's fixed held-out prompts (trl_var.data.make_heldout_dataset, saved as JSON lines): `make evaluate`.
HELDOUT_PROMPTS = os.path.join(RECIPES, "data", "text_render_heldout.jsonl")

# Tesseract's page segmentation: CVTG-2K images hold 2-5 text regions scattered over 1024 px, which "sparse text" (11)
# finds; the toy prompts datasets ask for one word per image, for which "single text line" (7) is the right prior.
DEFAULT_OCR_PSM = {"cvtg2k": 11, "prompts": 7}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class EvaluationArguments:
    """Options of the text-rendering evaluation."""

    model: str = field(
        default=SHIPPED_MODEL,
        metadata={
            "help": "Folder or Hub id of a trl_var model with its tokenizer (VARPipeline.from_pretrained). Default: "
            "the tiny pretrained model shipped in recipes/models/var-tiny-text-render."
        },
    )
    dataset: str | None = field(
        default=None,
        metadata={
            "help": "cvtg2k: a folder in CVTG-2K's layout (CVTG/, CVTG-style/), its .zip, or a Hub id. prompts: a "
            "json/jsonl/csv/parquet file, a folder or a Hub id with a prompt column. Default: CVTG-2K "
            f"({CVTG2K_REPO_ID}); for the shipped tiny model (the default --model), its held-out prompts "
            "(recipes/data/text_render_heldout.jsonl)."
        },
    )
    dataset_format: Literal["cvtg2k", "prompts"] | None = field(
        default=None,
        metadata={
            "help": "cvtg2k: the CVTG-2K benchmark. prompts: any dataset of prompts with target texts. Default: "
            "cvtg2k, or prompts for the shipped tiny model's held-out prompts."
        },
    )
    subsets: list[str] = field(
        default_factory=lambda: ["CVTG", "CVTG-style"],
        metadata={"help": "cvtg2k: which halves of the benchmark (CVTG: plain, CVTG-style: with attributes)."},
    )
    region_counts: list[int] = field(
        default_factory=lambda: [2, 3, 4, 5], metadata={"help": "cvtg2k: numbers of text regions to evaluate."}
    )
    split_files: Literal["combined", "fine"] = field(
        default="combined", metadata={"help": "cvtg2k: read {n}_combined.json or the fine-grained {n}.json."}
    )
    dataset_split: str = field(default="train", metadata={"help": "prompts: the split to load."})
    target_column: str | None = field(
        default=None,
        metadata={"help": "prompts: column with the text(s) to render. Default: the quoted spans of the prompt."},
    )
    num_samples: int | None = field(
        default=None, metadata={"help": "Evaluate a random subset of this many prompts (seeded). Default: all."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the subset and of the sampling."})
    batch_size: int = field(
        default=8, metadata={"help": "Images sampled per forward pass (part of the seeding: changes the images)."}
    )
    # Sampling: each option not given is the model's (its generation_config.json; without one, the paper's).
    guidance_scale: float | None = field(
        default=None, metadata={"help": "Classifier-free guidance. Default: the model's (paper: 5)."}
    )
    guidance_schedule: Literal["constant", "linear"] | None = field(
        default=None,
        metadata={"help": "constant, or linear from 1 at the first scale (VAR). Default: the model's (constant)."},
    )
    temperature: float | None = field(
        default=None, metadata={"help": "Sampling temperature. Default: the model's (1)."}
    )
    top_k: int | None = field(
        default=None, metadata={"help": "Top-k filtering (0: off). Default: the model's (paper: 2)."}
    )
    top_p: float | None = field(
        default=None, metadata={"help": "Nucleus filtering (1.0: off). Default: the model's (paper: 0.9)."}
    )
    clip_model: str | None = field(
        default=None,
        metadata={
            "help": "CLIPModel folder or Hub id for CLIPScore (benchmark: openai/clip-vit-large-patch14). Default: "
            "CLIPScore skipped."
        },
    )
    ocr_psm: int | None = field(
        default=None,
        metadata={
            "help": "Tesseract page segmentation mode. Default: 11 (sparse text) for cvtg2k, whose images hold "
            "several scattered text regions; 7 (single line) for prompts, e.g. the toy one-word images."
        },
    )
    ocr_upscale: int | None = field(
        default=None,
        metadata={
            "help": "Upscaling before OCR. Default: to ~256 px on the short side (4x for 64 px, 1x for 1024 px)."
        },
    )
    ocr_backend: Literal["tesseract", "ppocr"] = field(
        default="tesseract",
        metadata={
            "help": "OCR engine: tesseract, or ppocr (PP-OCRv6-small via RapidOCR, the papers' OCR family; "
            'pip install "trl-var[ppocr]"). --ocr_psm and --ocr_upscale are Tesseract\'s only.'
        },
    )
    ocr_timeout: float = field(
        default=60,
        metadata={
            "help": "Seconds the OCR engine (Tesseract or PP-OCR) may take on one image (0: no limit); an image not read in time counts as read "
            "empty, with a warning, so a hung tesseract cannot hang an unattended run."
        },
    )
    num_grid_images: int = field(default=16, metadata={"help": "Samples shown in samples.png (0: no grid)."})
    output_dir: str = field(
        default="outputs/evaluate-text-render",
        metadata={"help": "Where results go; a rerun with the same options resumes from what is there."},
    )
    device: str | None = field(default=None, metadata={"help": "Default: cuda when available, else cpu."})
    dtype: Literal["float32", "bfloat16", "float16"] = field(
        default="float32", metadata={"help": "Model dtype (bfloat16 for large models on GPUs)."}
    )


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the layout of the description above and shows every option's default."""


def resolve_dataset(args: EvaluationArguments) -> tuple[str, str]:
    """
    The dataset to evaluate on and its format: the ones given; without `--dataset`, the toy's held-out prompts for the
    shipped tiny model (a one-word 64 px model), CVTG-2K for any other model.
    """
    if args.dataset is not None:
        return args.dataset, args.dataset_format or "cvtg2k"
    shipped = os.path.isdir(args.model) and os.path.samefile(args.model, SHIPPED_MODEL)
    if shipped and args.dataset_format != "cvtg2k":
        return HELDOUT_PROMPTS, "prompts"
    if args.dataset_format == "prompts":
        raise ValueError("`--dataset_format prompts` needs `--dataset`: the file, folder or Hub id of the prompts.")
    return CVTG2K_REPO_ID, "cvtg2k"


def main(args: EvaluationArguments) -> dict:
    set_seed(args.seed)
    dataset_path, dataset_format = resolve_dataset(args)
    if dataset_format == "cvtg2k":
        dataset = load_cvtg2k(
            dataset_path, subset=args.subsets, region_counts=args.region_counts, split_files=args.split_files
        )
    else:
        dataset = load_prompt_dataset(dataset_path, target_column=args.target_column, split=args.dataset_split)
    pipeline = load_pipeline(args.model, device=args.device, dtype=DTYPES[args.dtype])

    results = evaluate_text_rendering(
        pipeline,
        dataset,
        args.output_dir,
        num_samples=args.num_samples,
        batch_size=args.batch_size,
        seed=args.seed,
        ocr_psm=args.ocr_psm if args.ocr_psm is not None else DEFAULT_OCR_PSM[dataset_format],
        ocr_upscale=args.ocr_upscale,
        ocr_timeout=args.ocr_timeout,
        ocr_backend=args.ocr_backend,
        clip_model=args.clip_model,
        num_grid_images=args.num_grid_images,
        **{name: getattr(args, name) for name in SAMPLING_ARGUMENTS},  # None: the model's generation_config
    )
    print(format_results_table(results))
    print(f"\nResults in {args.output_dir} (results.md, results.json, samples.png, samples.jsonl).")
    return results


if __name__ == "__main__":
    parser = TrlParser(EvaluationArguments, description=__doc__, formatter_class=HelpFormatter)
    (args,) = parser.parse_args_and_config()
    try:
        resolve_dataset(args)
    except ValueError as error:  # options that do not go together: say so the argparse way
        parser.error(str(error))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        main(args)
    except FileNotFoundError as error:  # a missing model or dataset: the message says where we looked
        logger.error(str(error))
        sys.exit(1)
