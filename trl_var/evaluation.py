"""
Text-rendering evaluation of a [`VARPipeline`] on a dataset of prompts with target texts (CVTG-2K, or any such
dataset): sample one image per prompt, read it with Tesseract, score it with the benchmark's metrics and aggregate the
paper's table (Word Accuracy, NED and CLIPScore per number of text regions, and overall).

The evaluation is resumable: every finished sample is appended to `samples.jsonl` in the output folder (its image to
`images/`), and a rerun with the same settings skips the samples found there, so a crash loses no finished sample.
`recipes/evaluate_text_render.py` is the command-line front end.

The OCR engine is Tesseract by default, where the benchmark uses PaddleOCR; `ocr_backend="ppocr"` reads with
PP-OCRv6-small, of PaddleOCR's family. Compare models evaluated here with each other, read by the same engine, not with
the absolute numbers of the papers.
"""

import hashlib
import json
import logging
import os
import time
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TextIO

import evaluate
import numpy as np
import PIL.Image
import torch
import transformers
from datasets import Dataset
from tqdm.auto import tqdm

from .data.cvtg import _looks_like_local_path
from .metrics import CLIP_SCORE, NED, WORD_ACCURACY, functional, score_words
from .models import VARPipeline, sampling_settings
from .rewards.ocr import OCROutputError, OCRWord, check_ocr, ocr_engine_name, read_text
from .utils import markdown_table
from .visualization import make_image_grid


logger = logging.getLogger(__name__)

SAMPLES_FILE = "samples.jsonl"
CONFIG_FILE = "evaluation_config.json"
RESULTS_JSON = "results.json"
RESULTS_MARKDOWN = "results.md"
GRID_FILE = "samples.png"
IMAGES_DIR = "images"

# The identifying columns of a row copied into its record, when the dataset has them (CVTG-2K has both).
_ID_COLUMNS = ("subset", "index")


def load_pipeline(
    model_name_or_path: str | os.PathLike, device: str | torch.device | None = None, dtype: torch.dtype | None = None
) -> VARPipeline:
    """
    Loads a [`VARPipeline`] (model and tokenizer) from a local folder or a Hub id, with an error that says where it
    looked when neither has it.

    Args:
        model_name_or_path (`str` or `os.PathLike`): folder or Hub id saved with `VARPipeline.save_pretrained` (or a
            trainer's `save_model`).
        device (`str` or `torch.device`, *optional*): defaults to `"cuda"` when available, else `"cpu"`.
        dtype (`torch.dtype`, *optional*): the model's dtype, e.g. `torch.bfloat16` on GPUs; defaults to float32.

    Returns:
        [`VARPipeline`]: in eval mode, on `device`.
    """
    path = os.fspath(model_name_or_path)
    if not os.path.isdir(path) and _looks_like_local_path(path):
        raise FileNotFoundError(f"No model folder at {path!r} (resolved to {os.path.abspath(path)}).")
    try:
        pipeline = VARPipeline.from_pretrained(path, **({"dtype": dtype} if dtype is not None else {}))
    except (OSError, ValueError) as error:
        if os.path.isdir(path):
            where = f"the folder {os.path.abspath(path)}"
        else:
            where = f"{path!r}: not a local folder ({os.path.abspath(path)}) nor a reachable or cached Hub repository"
        raise FileNotFoundError(
            f"Could not load a next-scale model and its tokenizer from {where} ({type(error).__name__}: {error})."
        ) from error
    return pipeline.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def model_revision(config: transformers.PreTrainedConfig) -> str | None:
    """
    What tells one version of a model's weights from another, so that a resumed evaluation never mixes two models
    saved under one name: for a model loaded from a local folder, a hash of the names, sizes and modification times of
    its weight files (a model retrained into the same folder is another revision); for a Hub download, the commit
    hash; else (a model built in memory) `None`. It errs on the safe side: a copy of the folder that does not keep the
    files' times (`cp` without `-p`) is another revision, and a resume is refused rather than mixing two models.
    """
    path = config._name_or_path
    if path and os.path.isdir(path):
        digest = hashlib.sha256()
        for name in sorted(os.listdir(path)):
            if name.endswith((".safetensors", ".bin")):
                stat = os.stat(os.path.join(path, name))
                digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
        return digest.hexdigest()[:16]
    return getattr(config, "_commit_hash", None)


def score_prompts(
    pipeline: VARPipeline,
    prompts: list[str],
    targets: list[str | list[str]],
    *,
    batch_size: int = 50,
    seed: int = 0,
    ocr_psm: int = 7,
    ocr_timeout: float = 60,
    ocr_backend: str = "tesseract",
    num_workers: int | None = None,
    **sampling,
) -> dict[str, Any]:
    """
    In-memory Word Accuracy and NED of one sample per prompt: the quick evaluation of training loops and benchmarks
    (pretraining's progress, `make train`'s before/after, the ablation), with nothing written to disk.

    Images are sampled in blocks of `batch_size` rows, block `k` with the generator [`block_generator`]`(seed, k)`,
    so the same model, prompts and seed give the same images. `sampling` is forwarded to the pipeline (settings not
    given are the model's `generation_config`; a [`VARGRPOConfig`]'s `sampling_kwargs(evaluation=True)` gives all of
    them). `ocr_psm` defaults to 7 (one text line), the right mode for single-word renders; an image Tesseract has not
    read within `ocr_timeout` seconds counts as read empty. `ocr_backend` is the OCR engine, `"tesseract"` or `"ppocr"`
    (see [`~trl_var.rewards.read_text`]).

    Returns:
        `dict` with `word_accuracy`, `ned` (floats), `predictions` (the text read in every image), `num_unread` (the
        images OCR did not read, timed out or failed, each counted as read empty in the scores) and `images`.
    """
    images = []
    for block, start in enumerate(range(0, len(prompts), batch_size)):
        generator = block_generator(seed, block, pipeline.device)
        images += pipeline(prompts[start : start + batch_size], generator=generator, **sampling).images
    reads = _read_images(images, psm=ocr_psm, timeout=ocr_timeout, backend=ocr_backend, num_workers=num_workers)
    predictions = [read or "" for read in reads]
    return {
        "word_accuracy": functional.word_accuracy(predictions, targets),
        "ned": functional.ned(predictions, targets),
        "predictions": predictions,
        "num_unread": sum(read is None for read in reads),
        "images": images,
    }


def block_generator(seed: int, block: int, device: str | torch.device) -> torch.Generator:
    """
    The random generator of block `block` of an evaluation, seeded by `seed * 1_000_003 + block` (distinct for every
    `(seed, block)` with `block < 1_000_003`): a block's images depend on the seed and its place only, not on what
    was sampled before it, so a resumed evaluation redraws an interrupted block exactly.
    """
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + block)


def read_words(
    image: PIL.Image.Image, *, psm: int, upscale: int | None = None, timeout: float = 60, backend: str = "tesseract"
) -> list[OCRWord]:
    """
    The words `backend` reads in `image` ([`~trl_var.rewards.ocr.read_text`]); an image not read within `timeout` seconds
    counts as read empty, with a warning, rather than hanging the evaluation (`0`: wait forever); so does an image
    whose OCR output is no table of words ([`~trl_var.rewards.ocr.OCROutputError`]), rather than failing it.
    """
    return _try_read_words(image, psm=psm, upscale=upscale, timeout=timeout, backend=backend) or []


def _try_read_words(
    image: PIL.Image.Image, *, psm: int, upscale: int | None, timeout: float, backend: str
) -> list[OCRWord] | None:
    """[`read_words`], but `None` for an image not read (timed out, or no table of words), with the warning."""
    try:
        return read_text(image, backend=backend, upscale=upscale, psm=psm, timeout=timeout)
    except TimeoutError:
        logger.warning(f"OCR ({backend}) did not read an image within {timeout} s: counted as read empty.")
        return None
    except OCROutputError as error:
        logger.warning(f"{error}: the image counts as read empty.")
        return None


def read_images(
    images: list[PIL.Image.Image],
    *,
    psm: int = 7,
    timeout: float = 60,
    backend: str = "tesseract",
    num_workers: int | None = None,
) -> list[str]:
    """
    The OCR read of every image (its words joined by single spaces, see [`read_words`]), `num_workers` images (default:
    `os.cpu_count()`) at a time.
    """
    reads = _read_images(images, psm=psm, timeout=timeout, backend=backend, num_workers=num_workers)
    return [read or "" for read in reads]


def _read_images(
    images: list[PIL.Image.Image], *, psm: int, timeout: float, backend: str, num_workers: int | None
) -> list[str | None]:
    """[`read_images`], but `None` for an image not read."""

    def read(image: PIL.Image.Image) -> str | None:
        words = _try_read_words(image, psm=psm, upscale=None, timeout=timeout, backend=backend)
        return None if words is None else " ".join(word.text for word in words)

    with ThreadPoolExecutor(max_workers=num_workers or os.cpu_count() or 1) as pool:
        return list(pool.map(read, images))


def evaluate_text_rendering(
    pipeline: VARPipeline,
    dataset: Dataset,
    output_dir: str | os.PathLike,
    *,
    num_samples: int | None = None,
    batch_size: int = 8,
    seed: int = 0,
    ocr_psm: int = 11,
    ocr_upscale: int | None = None,
    ocr_timeout: float = 60,
    ocr_backend: str = "tesseract",
    clip_model: str | None = None,
    num_grid_images: int = 16,
    num_workers: int | None = None,
    **sampling,
) -> dict[str, Any]:
    """
    Samples one image per prompt, reads it with Tesseract and scores it; writes `samples.jsonl`, `images/`,
    `results.json`, `results.md` and `samples.png` (a grid of the first samples with their word accuracy) to
    `output_dir`. Resumes from `samples.jsonl` when `output_dir` holds an earlier run with the same settings.

    Images are sampled in fixed blocks of `batch_size` rows, block `k` with the generator
    [`block_generator`]`(seed, k)`, as [`score_prompts`] samples, so a resumed run draws the same images as an
    uninterrupted one (a block interrupted halfway is sampled again in full). OCR runs in a thread pool (one tesseract
    process per image) while the next block is sampled.

    Args:
        pipeline ([`VARPipeline`]):
            The model and tokenizer.
        dataset (`datasets.Dataset`):
            Rows with `prompt`, `targets` (`list[str]`) and `num_regions`, as [`~trl_var.data.load_cvtg2k`] and
            [`~trl_var.data.load_prompt_dataset`] return them.
        output_dir (`str` or `os.PathLike`):
            Where the results go, and where an earlier run is resumed from.
        num_samples (`int`, *optional*):
            Evaluate a random subset of this many rows (drawn with `seed`, kept in dataset order). Default: all rows.
        batch_size (`int`, *optional*, defaults to 8):
            Images sampled per forward pass. Part of the seeding: change it and the images change.
        seed (`int`, *optional*, defaults to 0):
            Seed of the subset and of the sampling.
        ocr_psm (`int`, *optional*, defaults to 11):
            Tesseract page segmentation mode: 11 (sparse text) finds the scattered text regions of CVTG-2K images; 7
            (one text line) suits images of a single word.
        ocr_upscale (`int`, *optional*):
            Upscaling before OCR. Default: enough to bring the short side to about 256 px (4x for 64 px images, which
            Tesseract reads best at 4x, none for 1024 px images).
        ocr_timeout (`float`, *optional*, defaults to 60):
            Seconds after which an image Tesseract has not read counts as read empty (`0`: wait forever).
        ocr_backend (`str`, *optional*, defaults to `"tesseract"`):
            The OCR engine: `"tesseract"`, or `"ppocr"` (PP-OCRv6-small via RapidOCR, the benchmark's OCR family;
            `ocr_psm` and `ocr_upscale` are Tesseract's only). `results.json` names the engine (`ocr_engine`).
        clip_model (`str`, *optional*):
            `CLIPModel` folder or Hub id for CLIPScore (the benchmark's is `openai/clip-vit-large-patch14`). If `None`,
            CLIPScore is skipped and its column left empty.
        num_grid_images (`int`, *optional*, defaults to 16):
            Samples shown in `samples.png` (0: no grid).
        num_workers (`int`, *optional*):
            Tesseract processes run at once. Defaults to `os.cpu_count()`.
        **sampling:
            `guidance_scale`, `guidance_schedule`, `temperature`, `top_k`, `top_p`, as [`VARPipeline.__call__`]
            takes them; the ones not given are the model's `generation_config` (by default the paper's evaluation
            decoding: guidance 5, constant schedule, temperature 1, top-k 2, top-p 0.9). The settings used are
            recorded in `evaluation_config.json`.

    Returns:
        `dict`: The content of `results.json`: `rows` maps each number of regions (as a string) and `"average"` to
        `num_samples`, `num_words`, `word_accuracy`, `ned` and `clip_score` (`None` when skipped), plus the `config`.
    """
    missing = [column for column in ("prompt", "targets", "num_regions") if column not in dataset.column_names]
    if missing:
        raise ValueError(f"The dataset lacks the column(s) {missing}; columns: {dataset.column_names}.")
    if len(dataset) == 0:
        raise ValueError("The dataset is empty: nothing to evaluate.")
    check_ocr(ocr_backend)

    rows = list(range(len(dataset)))
    if num_samples is not None and num_samples < len(dataset):
        rows = sorted(np.random.default_rng(seed).permutation(len(dataset))[:num_samples].tolist())
    config = {
        "model": _resolved_path(pipeline.model.config._name_or_path),
        "model_revision": model_revision(pipeline.model.config),
        "num_rows": len(dataset),
        "num_samples": len(rows),
        "batch_size": batch_size,
        "seed": seed,
        **sampling_settings(pipeline.model.generation_config, **sampling),
        "ocr_backend": ocr_backend,
        "ocr_engine": ocr_engine_name(ocr_backend),
        "ocr_psm": ocr_psm,
        "ocr_upscale": ocr_upscale,
        "clip_model": clip_model,
    }
    os.makedirs(os.path.join(output_dir, IMAGES_DIR), exist_ok=True)
    _check_or_write_config(output_dir, config)
    prompts = dataset["prompt"]
    records = _read_records(os.path.join(output_dir, SAMPLES_FILE), prompts)
    if records:
        logger.warning(f"Resuming: {len(records)} of {len(rows)} samples already done in {output_dir}.")

    clip_metric = evaluate.load(CLIP_SCORE, keep_in_memory=True) if clip_model is not None else None
    blocks = [rows[start : start + batch_size] for start in range(0, len(rows), batch_size)]
    progress = tqdm(total=len(rows), initial=len(records), desc="Evaluating", unit="image")
    with (
        ThreadPoolExecutor(max_workers=num_workers or os.cpu_count() or 1) as pool,
        open(os.path.join(output_dir, SAMPLES_FILE), "a", encoding="utf-8") as samples_file,
    ):
        pending = None  # the previous block, whose OCR runs while this one is sampled
        for block_number, block in enumerate(blocks):
            todo = [row for row in block if row not in records]
            if not todo:
                continue
            images = pipeline(
                [prompts[row] for row in block],
                generator=block_generator(seed, block_number, pipeline.device),
                batch_size=len(block),
                **sampling,
            ).images
            images = {row: image for row, image in zip(block, images, strict=True) if row in todo}
            paths = {row: os.path.join(IMAGES_DIR, f"{row:06d}.png") for row in todo}
            for row in todo:
                images[row].save(os.path.join(output_dir, paths[row]))
            reads = {
                row: pool.submit(
                    read_words,
                    images[row],
                    psm=ocr_psm,
                    upscale=ocr_upscale or None,
                    timeout=ocr_timeout,
                    backend=ocr_backend,
                )
                for row in todo
            }
            clip_scores = dict.fromkeys(todo)
            if clip_metric is not None:
                scores = clip_metric.compute(
                    predictions=[os.path.join(output_dir, paths[row]) for row in todo],
                    references=[prompts[row] for row in todo],
                    model_name_or_path=clip_model,
                    device=str(pipeline.device),
                )["clip_scores"]
                clip_scores = dict(zip(todo, scores, strict=True))
            if pending is not None:
                _write_records(samples_file, dataset, *pending, records, progress)
            pending = (todo, paths, reads, clip_scores)
        if pending is not None:
            _write_records(samples_file, dataset, *pending, records, progress)
    progress.close()

    ordered = [records[row] for row in rows]
    results = {"rows": aggregate_results(ordered), "config": config}
    with open(os.path.join(output_dir, RESULTS_JSON), "w", encoding="utf-8") as file:
        json.dump(results, file, indent=2)
    with open(os.path.join(output_dir, RESULTS_MARKDOWN), "w", encoding="utf-8") as file:
        file.write(format_results_table(results) + "\n")
    if num_grid_images > 0:
        shown = ordered[:num_grid_images]
        grid = make_image_grid(
            [_open_image(os.path.join(output_dir, record["image"])) for record in shown],
            [f"acc {record['word_accuracy']:.2f}: {record['prompt']}" for record in shown],
            cell_size=256,
            caption_lines=4,
        )
        grid.save(os.path.join(output_dir, GRID_FILE))
    return results


def _open_image(path: str) -> PIL.Image.Image:
    with PIL.Image.open(path) as image:
        return image.convert("RGB")


def _write_records(
    samples_file: TextIO,
    dataset: Dataset,
    todo: list[int],
    paths: dict[int, str],
    reads: dict[int, Future],
    clip_scores: dict[int, float | None],
    records: dict[int, dict[str, Any]],
    progress: tqdm,
) -> None:
    """Appends one finished sample per line, flushed at once, so that a crash loses no finished sample."""
    for row in todo:
        words: list[OCRWord] = reads[row].result()
        example = dataset[row]
        scores = score_words([word.text for word in words], example["targets"])
        record = {
            "row": row,
            **{column: example[column] for column in _ID_COLUMNS if column in example},
            "prompt": example["prompt"],
            "targets": example["targets"],
            "num_regions": example["num_regions"],
            "image": paths[row],
            "ocr_words": [word.text for word in words],
            "word_accuracy": scores.word_accuracy,
            "ned": scores.ned,
            "clip_score": clip_scores[row],
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        samples_file.write(json.dumps(record) + "\n")
        samples_file.flush()
        records[row] = record
        progress.update(1)


def _resolved_path(name_or_path: str) -> str:
    """A local folder as its resolved absolute path (the same model given as a relative path is the same model)."""
    return os.path.realpath(name_or_path) if name_or_path and os.path.isdir(name_or_path) else name_or_path


def _check_or_write_config(output_dir: str | os.PathLike, config: dict[str, Any]) -> None:
    path = os.path.join(output_dir, CONFIG_FILE)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as file:
            previous = json.load(file)
        if isinstance(previous.get("model"), str):  # a record written with a relative path
            previous["model"] = _resolved_path(previous["model"])
        unrecorded = [key for key in config if key not in previous]  # settings an older version did not record
        if unrecorded:
            logger.warning(
                f"{path} does not record {unrecorded} (written by an older trl_var); resuming on the assumption that "
                "they did not change."
            )
        changed = {
            key: (previous[key], value) for key, value in config.items() if key in previous and previous[key] != value
        }
        if changed:
            details = ", ".join(f"{key}: {old!r} then, {new!r} now" for key, (old, new) in changed.items())
            raise ValueError(
                f"{output_dir} holds an evaluation with other settings ({details}); its samples cannot be reused. "
                f"Use another output directory, or delete this one to start over."
            )
        if not unrecorded:
            return
    with open(path, "w", encoding="utf-8") as file:
        json.dump(config, file, indent=2)


def _read_records(path: str, prompts: list[str]) -> dict[int, dict[str, Any]]:
    """The finished samples of an earlier run, by dataset row. A last line cut short by a crash is dropped."""
    if not os.path.isfile(path):
        return {}
    with open(path, "rb") as file:
        content = file.read()
    if content and not content.endswith(b"\n"):
        # The previous run stopped while writing this line: cut it, so that the next record starts a line of its own.
        content = content[: content.rfind(b"\n") + 1]
        with open(path, "wb") as file:
            file.write(content)
        logger.warning(f"Dropped an incomplete last line of {path} (the previous run stopped while writing it).")
    records = {}
    for number, line in enumerate(content.decode("utf-8").splitlines(), start=1):
        record = json.loads(line)
        row = record["row"]
        if row >= len(prompts) or prompts[row] != record["prompt"]:
            raise ValueError(
                f"{path}, line {number}: row {row} has the prompt {record['prompt']!r}, which is not the dataset's "
                f"prompt of that row. The output directory belongs to another dataset; use another one."
            )
        records[row] = record
    return records


def aggregate_results(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """
    The table of the paper from per-sample records: one row per number of text regions (ascending) and an `"average"`
    row that pools all samples, as the CVTG-2K evaluation does (Word Accuracy and NED pool target words, CLIPScore
    averages images; the average is therefore not the mean of the other rows).

    Args:
        records (`Iterable[dict]`): per sample, `num_regions`, `targets`, `ocr_words` and `clip_score` (or `None`).

    Returns:
        `dict[str, dict]`: for each number of regions (as a string) and `"average"`: `num_samples`, `num_words`,
        `word_accuracy`, `ned` and `clip_score` (`None` unless every sample of the row has one).
    """
    records = list(records)
    groups = defaultdict(list)
    for record in records:
        groups[str(record["num_regions"])].append(record)
    groups = {key: groups[key] for key in sorted(groups, key=int)}
    groups["average"] = records

    word_accuracy = evaluate.load(WORD_ACCURACY, keep_in_memory=True)
    ned = evaluate.load(NED, keep_in_memory=True)
    table = {}
    for key, group in groups.items():
        predictions = [record["ocr_words"] for record in group]
        references = [record["targets"] for record in group]
        accuracy = word_accuracy.compute(predictions=predictions, references=references)
        clip_scores = [record["clip_score"] for record in group]
        table[key] = {
            "num_samples": len(group),
            "num_words": accuracy["num_words"],
            "word_accuracy": accuracy["word_accuracy"],
            "ned": ned.compute(predictions=predictions, references=references)["ned"],
            "clip_score": None if None in clip_scores else sum(clip_scores) / len(clip_scores),
        }
    return table


def format_results_table(results: dict[str, Any]) -> str:
    """
    The results as a markdown table like the paper's (rows: number of text regions, then the average; columns: Word
    Acc, NED, CLIPScore), with a line saying when CLIPScore was skipped.
    """
    rows = [
        [key, row["num_samples"], row["num_words"], f"{row['word_accuracy']:.4f}", f"{row['ned']:.4f}"]
        + ["-" if row["clip_score"] is None else f"{row['clip_score']:.4f}"]
        for key, row in results["rows"].items()
    ]
    table = markdown_table(["regions", "images", "words", "Word Acc", "NED", "CLIPScore"], rows)
    if results["config"]["clip_model"] is None:
        table += "\n\nCLIPScore skipped: no CLIP model given (`--clip_model`, e.g. openai/clip-vit-large-patch14)."
    if "ocr_engine" in results["config"]:  # results of older versions do not name it (Tesseract, the only engine then)
        table += f"\n\nOCR: {results['config']['ocr_engine']}."
    return table
