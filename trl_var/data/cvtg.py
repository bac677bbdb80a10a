"""
Evaluation prompts as `datasets.Dataset`s: the CVTG-2K benchmark of TextCrafter (arXiv 2503.23461) and any dataset of
prompts with target texts.

Every loader returns the columns the evaluation needs: `prompt`, `targets` (the texts to render, one string per text
region) and `num_regions`, and skips malformed rows with a logged warning instead of failing on them.
"""

import json
import logging
import os
import re
import zipfile
from collections.abc import Sequence
from typing import Any, Literal

from datasets import Dataset

from ..rewards.ocr import extract_quoted_spans
from .loading import load_dataset_from
from .loading import looks_like_local_path as _looks_like_local_path


logger = logging.getLogger(__name__)

CVTG2K_REPO_ID = "dnkdnk/CVTG-2K"
CVTG2K_SUBSETS = ("CVTG", "CVTG-style")
CVTG2K_REGION_COUNTS = (2, 3, 4, 5)

_CVTG_FILE = re.compile(r"^(\d+)(_combined)?\.json$")


def load_cvtg2k(
    path_or_repo: str | os.PathLike = CVTG2K_REPO_ID,
    subset: str | Sequence[str] = CVTG2K_SUBSETS,
    region_counts: Sequence[int] = CVTG2K_REGION_COUNTS,
    split_files: Literal["combined", "fine"] = "combined",
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Dataset:
    r"""
    Loads CVTG-2K, the complex visual text generation benchmark of TextCrafter (arXiv 2503.23461): 2,000 prompts with 2
    to 5 text regions each, on which "VAR RL Done Right" reports Word Accuracy, NED and CLIPScore.

    The published layout (the Hub dataset `dnkdnk/CVTG-2K` holds it as a zip) is two folders, `CVTG/` (plain prompts)
    and `CVTG-style/` (prompts with font, size and colour attributes), each with `{n}.json` (with fine-grained
    annotations) and `{n}_combined.json` for n = 2..5 text regions. Each file has a top-level `data_list` whose items
    have `index`, `prompt`, `carrier_list` and `sentence_list`; the target texts are the quoted spans of `prompt`.
    A file that maps indices to prompts (`{"0": "A sign that says 'READ' ..."}`, as some copies of the benchmark have)
    is read too. Folder names are matched case-insensitively (TextCrafter's own scripts spell `CVTG-Style`).

    Rows without a prompt, without quoted text, with an index that is not an integer, with a `carrier_list` /
    `sentence_list` that is not a list of texts (a lone string counts as one text) or, in the fine-grained files,
    without them are skipped, and a warning lists them per file.

    Args:
        path_or_repo (`str` or `os.PathLike`, *optional*, defaults to `"dnkdnk/CVTG-2K"`):
            A local folder in the published layout (the folders may sit one level deeper, e.g. `CVTG-2K/CVTG/`), a
            local `.zip` of it, or a Hub dataset id, downloaded with `huggingface_hub.snapshot_download` and then read
            as a local folder (or the zip inside it).
        subset (`str` or `Sequence[str]`, *optional*, defaults to `("CVTG", "CVTG-style")`):
            Which half (or both, the full benchmark) to load.
        region_counts (`Sequence[int]`, *optional*, defaults to `(2, 3, 4, 5)`):
            Which files (numbers of text regions) to load.
        split_files (`"combined"` or `"fine"`, *optional*, defaults to `"combined"`):
            Read `{n}_combined.json` or the fine-grained `{n}.json`.
        revision (`str`, *optional*):
            Hub revision, for a Hub id.
        cache_dir (`str` or `os.PathLike`, *optional*):
            Hub cache folder, for a Hub id.

    Returns:
        `datasets.Dataset`: One row per prompt, ordered by subset, number of regions and file order, with columns
        `prompt`, `targets` (`list[str]`, the quoted spans), `num_regions`, `subset`, `index`, `carrier_list` and
        `sentence_list` (empty lists where a file has no fine-grained annotations).

    Raises:
        `FileNotFoundError`: when the folder, zip or Hub dataset cannot be found (the message says where it looked),
        or when a requested file is missing from it. `ValueError`: naming a file that is not valid JSON or not in
        the benchmark's format.

    Example:

    ```python
    >>> from trl_var.data import load_cvtg2k

    >>> dataset = load_cvtg2k("path/to/CVTG-2K.zip", subset="CVTG", region_counts=[2])
    >>> dataset[0]["prompt"], dataset[0]["targets"]
    ("A quiet bookstore with a sign that says 'READ'. A coffee cup on the table with the word 'MORNING'.",
     ['READ', 'MORNING'])
    ```
    """
    subsets = [subset] if isinstance(subset, str) else list(subset)
    canonical = {name.lower(): name for name in CVTG2K_SUBSETS}
    unknown = [name for name in subsets if name.lower() not in canonical]
    if unknown or not subsets:
        raise ValueError(f"`subset` must be among {CVTG2K_SUBSETS}, got {subset!r}.")
    if split_files not in ("combined", "fine"):
        raise ValueError(f"`split_files` must be 'combined' or 'fine', got {split_files!r}.")
    if not region_counts:
        raise ValueError("`region_counts` is empty.")

    files, where = _find_cvtg_files(path_or_repo, revision=revision, cache_dir=cache_dir)
    rows = []
    for name in subsets:
        name = canonical[name.lower()]
        for num_regions in region_counts:
            file_name = f"{num_regions}_combined.json" if split_files == "combined" else f"{num_regions}.json"
            key = (name.lower(), file_name)
            if key not in files:
                found = sorted(f"{folder}/{file}" for folder, file in files)
                raise FileNotFoundError(f"{name}/{file_name} is not in {where}; CVTG-2K files found there: {found}.")
            rows.extend(_parse_cvtg_file(files[key], name, num_regions, f"{name}/{file_name}", split_files == "fine"))
    return Dataset.from_list(rows)


def _find_cvtg_files(
    path_or_repo: str | os.PathLike, revision: str | None, cache_dir: str | os.PathLike | None
) -> tuple[dict[tuple[str, str], bytes], str]:
    """Reads the CVTG-2K JSON files (16 small files) into `{(subset folder lower-cased, file name): bytes}`."""
    path = os.fspath(path_or_repo)
    if os.path.isfile(path):
        return _read_zip(path), path
    if os.path.isdir(path):
        return _read_folder(path), path
    if _looks_like_local_path(path):
        raise FileNotFoundError(f"No CVTG-2K folder or zip at {path!r} (resolved to {os.path.abspath(path)}).")

    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(path, repo_type="dataset", revision=revision, cache_dir=cache_dir)
    except Exception as error:  # offline mode, network, auth or a bad id: all mean "not found here", said once
        raise FileNotFoundError(
            f"CVTG-2K: {path!r} is not a local folder or zip (looked for {os.path.abspath(path)}), and the Hub "
            f"dataset {path!r} could not be fetched or found in the Hub cache ({type(error).__name__}: {error}). "
            f"Download CVTG-2K.zip from https://huggingface.co/datasets/{CVTG2K_REPO_ID} and pass its path."
        ) from error
    return _read_folder(folder), f"the Hub dataset {path!r} (snapshot {folder})"


def _cvtg_key(relative_path: str) -> tuple[str, str] | None:
    parts = relative_path.replace("\\", "/").split("/")
    # macOS zips carry `__MACOSX/CVTG/._2.json` resource forks next to the real files
    if len(parts) < 2 or "__MACOSX" in parts or not _CVTG_FILE.match(parts[-1]):
        return None
    folder = parts[-2].lower()
    return (folder, parts[-1]) if folder in {name.lower() for name in CVTG2K_SUBSETS} else None


def _read_folder(folder: str) -> dict[tuple[str, str], bytes]:
    files: dict[tuple[str, str], bytes] = {}
    zips = []
    for root, dirs, names in os.walk(folder):
        if os.path.relpath(root, folder).count(os.sep) >= 1:  # the layout sits at most one folder deep
            dirs.clear()
        for name in sorted(names):
            path = os.path.join(root, name)
            key = _cvtg_key(os.path.relpath(path, folder))
            if key is not None and key not in files:
                with open(path, "rb") as file:
                    files[key] = file.read()
            elif name.lower().endswith(".zip"):
                zips.append(path)
    if not files:  # a Hub snapshot holds the zip as published
        for path in sorted(zips):
            files.update(_read_zip(path))
    return files


def _read_zip(path: str) -> dict[tuple[str, str], bytes]:
    if not zipfile.is_zipfile(path):
        raise FileNotFoundError(f"{path!r} is a file but not a zip archive; give the CVTG-2K folder or its zip.")
    files: dict[tuple[str, str], bytes] = {}
    with zipfile.ZipFile(path) as archive:
        for member in sorted(archive.namelist()):
            key = _cvtg_key(member)
            if key is not None and key not in files:
                files[key] = archive.read(member)
    return files


def _parse_cvtg_file(content: bytes, subset: str, num_regions: int, name: str, fine: bool) -> list[dict[str, Any]]:
    try:
        data = json.loads(content)
    except (UnicodeDecodeError, ValueError) as error:
        raise ValueError(
            f"{name} is not valid JSON ({type(error).__name__}: {error}); is it a CVTG-2K file?"
        ) from error
    if isinstance(data, dict) and "data_list" in data:
        items = data["data_list"]
    elif isinstance(data, dict) and all(isinstance(value, str) for value in data.values()):
        items = [{"index": key, "prompt": value} for key, value in data.items()]
    elif isinstance(data, list):
        items = data
    else:
        found = f"keys {sorted(data)[:10]}" if isinstance(data, dict) else f"a {type(data).__name__}"
        raise ValueError(f"{name} has no top-level `data_list` ({found}); is it a CVTG-2K file?")

    rows = []
    skipped: dict[str, list[Any]] = {
        "missing fields": [],
        "empty prompt": [],
        "no quoted text": [],
        "annotations not lists of texts": [],
    }
    required = ("index", "prompt", "carrier_list", "sentence_list") if fine else ("index", "prompt")
    for position, item in enumerate(items):
        if not isinstance(item, dict):
            skipped["missing fields"].append(f"item {position}")
            continue
        index = item.get("index", f"item {position}")
        if any(field not in item for field in required) or not _is_integer(item["index"]):
            skipped["missing fields"].append(index)
            continue
        prompt = item["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            skipped["empty prompt"].append(index)
            continue
        targets = extract_quoted_spans(prompt)
        if not targets:
            skipped["no quoted text"].append(index)
            continue
        carriers, sentences = _texts(item.get("carrier_list")), _texts(item.get("sentence_list"))
        if carriers is None or sentences is None:
            skipped["annotations not lists of texts"].append(index)
            continue
        rows.append(
            {
                "prompt": prompt,
                "targets": targets,
                "num_regions": num_regions,
                "subset": subset,
                "index": int(item["index"]),
                "carrier_list": carriers,
                "sentence_list": sentences,
            }
        )
    _warn_skipped(name, len(items), skipped)
    return rows


def _texts(value: Any) -> list[str] | None:
    """An annotation as a list of texts: a missing one is empty, a lone string is one text, anything but a list of
    strings or numbers is `None` (the row is skipped)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(
        isinstance(text, str | int | float) and not isinstance(text, bool) for text in value
    ):
        return [str(text) for text in value]
    return None


def _is_integer(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, str) and value.strip().isdigit()


def _warn_skipped(name: str, total: int, skipped: dict[str, list[Any]]) -> None:
    count = sum(len(where) for where in skipped.values())
    if count:
        reasons = "; ".join(f"{len(where)} {reason} ({where[:20]})" for reason, where in skipped.items() if where)
        logger.warning(f"Skipped {count} of {total} rows of {name}: {reasons}.")


def load_prompt_dataset(
    path_or_id: str | os.PathLike,
    target_column: str | None = None,
    prompt_column: str = "prompt",
    split: str = "train",
    name: str | None = None,
) -> Dataset:
    """
    Loads any dataset of prompts with target texts for evaluation, e.g. the toy held-out set of
    [`make_text_render_dataset`] saved as JSON (columns `prompt` and `text`).

    Args:
        path_or_id (`str` or `os.PathLike`):
            A `.json` / `.jsonl` / `.csv` / `.parquet` file, a folder (of such files, or saved with
            `Dataset.save_to_disk`) or a Hub dataset id, read with [`~trl_var.data.loading.load_dataset_from`].
        target_column (`str`, *optional*):
            Column with the text(s) to render: a string (one text region) or a list of strings. If `None`, the targets
            are the quoted spans of the prompt ([`extract_quoted_spans`]).
        prompt_column (`str`, *optional*, defaults to `"prompt"`):
            Column with the prompts; renamed to `prompt`.
        split (`str`, *optional*, defaults to `"train"`):
            Split to load (a single data file is split `"train"`).
        name (`str`, *optional*):
            Dataset configuration name, for a Hub dataset.

    Returns:
        `datasets.Dataset`: The dataset's columns plus `prompt`, `targets` (`list[str]`) and `num_regions`
        (`len(targets)`, unless the dataset has a `num_regions` column). Rows without a prompt or without targets are
        skipped with a warning.

    Raises:
        `FileNotFoundError`: when the file, folder or Hub dataset cannot be found (the message says where it looked).
    """
    path = os.fspath(path_or_id)
    dataset = load_dataset_from(path, name=name, split=split)

    if prompt_column not in dataset.column_names:
        raise ValueError(f"No prompt column {prompt_column!r} in {path!r}; columns: {dataset.column_names}.")
    if target_column is not None and target_column not in dataset.column_names:
        raise ValueError(f"No target column {target_column!r} in {path!r}; columns: {dataset.column_names}.")

    prompts = dataset[prompt_column]
    texts = dataset[target_column] if target_column is not None else [None] * len(prompts)
    targets, keep = [], []
    skipped: dict[str, list[Any]] = {"empty prompt": [], "no target text": []}
    for position, (prompt, text) in enumerate(zip(prompts, texts, strict=True)):
        if not isinstance(prompt, str) or not prompt.strip():
            skipped["empty prompt"].append(position)
            continue
        if target_column is None:
            row_targets = extract_quoted_spans(prompt)
        elif isinstance(text, str):
            row_targets = [text.strip()] if text.strip() else []
        else:
            row_targets = [str(span).strip() for span in text or [] if str(span).strip()]
        if not row_targets:
            skipped["no target text"].append(position)
            continue
        keep.append(position)
        targets.append(row_targets)
    _warn_skipped(path, len(prompts), skipped)

    dataset = dataset.select(keep)
    if prompt_column != "prompt":
        dataset = dataset.remove_columns([c for c in ("prompt",) if c in dataset.column_names])
        dataset = dataset.rename_column(prompt_column, "prompt")
    dataset = dataset.remove_columns([c for c in ("targets",) if c in dataset.column_names])
    dataset = dataset.add_column("targets", targets)
    if "num_regions" not in dataset.column_names:
        dataset = dataset.add_column("num_regions", [len(row_targets) for row_targets in targets])
    return dataset
