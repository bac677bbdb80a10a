"""
One loader for the datasets a user names on the command line: a data file, a folder or a Hub id. `datasets.load_dataset`
takes a folder or a Hub id but rejects a bare file path, and `load_from_disk` reads only what `save_to_disk` wrote;
[`load_dataset_from`] picks the right one, so training and evaluation accept the same names.
"""

import os

from datasets import Dataset, DatasetDict, load_dataset, load_from_disk


DATA_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def looks_like_local_path(path: str) -> bool:
    """A Hub id is `name` or `owner/name`; anything else that does not exist is a missing local path."""
    return (
        path.startswith((".", "/", "~"))
        or path.endswith((".zip", ".json"))
        or path.count("/") > 1
        or (os.sep != "/" and os.sep in path)
    )


def load_dataset_from(path_or_id: str | os.PathLike, name: str | None = None, split: str = "train") -> Dataset:
    """
    Loads one split of a dataset from a data file, a folder or the Hub.

    Args:
        path_or_id (`str` or `os.PathLike`):
            A `.json` / `.jsonl` / `.csv` / `.parquet` file (its one split is `"train"`), a folder of such files or
            one written by `Dataset.save_to_disk`, or a Hub dataset id.
        name (`str`, *optional*):
            Dataset configuration name, for a folder or a Hub dataset.
        split (`str`, *optional*, defaults to `"train"`):
            The split to load.

    Returns:
        `datasets.Dataset`

    Raises:
        `FileNotFoundError`: when nothing is found (the message says where it looked: the resolved path, and the Hub
        error for a Hub id). `ValueError`: for a file of another type, a file `datasets` cannot parse (named), or a
        split the dataset does not have.
    """
    path = os.fspath(path_or_id)
    extension = os.path.splitext(path)[1].lower()
    if os.path.isfile(path):
        if extension not in DATA_FILE_BUILDERS:
            raise ValueError(
                f"{path!r}: unsupported file type {extension!r}; use one of {sorted(DATA_FILE_BUILDERS)}."
            )
        try:
            return load_dataset(DATA_FILE_BUILDERS[extension], data_files=path, split=split)
        except ValueError as error:  # e.g. an unknown split: datasets' message says which ones exist
            raise ValueError(f"{path!r}: {error}") from error
        except Exception as error:  # datasets wraps parse errors of the file in its own exception types
            raise ValueError(
                f"Could not read {path!r} as a {extension} file ({type(error).__name__}: {error})."
            ) from error
    if os.path.isfile(os.path.join(path, "state.json")) or os.path.isfile(os.path.join(path, "dataset_dict.json")):
        dataset = load_from_disk(path)
        if isinstance(dataset, DatasetDict):
            if split not in dataset:
                raise ValueError(f"{path!r} has no split {split!r}; its splits: {sorted(dataset)}.")
            dataset = dataset[split]
        return dataset
    if os.path.isdir(path):
        return load_dataset(path, name, split=split)
    if looks_like_local_path(path) or extension in DATA_FILE_BUILDERS:
        raise FileNotFoundError(f"No dataset file or folder at {path!r} (resolved to {os.path.abspath(path)}).")
    try:
        return load_dataset(path, name, split=split)
    except Exception as error:  # offline mode, network, auth or a bad id: all mean "not found here", said once
        raise FileNotFoundError(
            f"{path!r} is not a local file or folder (looked for {os.path.abspath(path)}) and could not be loaded as "
            f"a Hub dataset ({type(error).__name__}: {error})."
        ) from error
