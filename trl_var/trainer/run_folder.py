"""
The output folder of a training run: what makes a rerun into it safe.

- `run_settings.json` records the settings of the run that owns the folder; a rerun with other settings (a new
  learning rate, the method switched off, another group size) is refused instead of silently resuming the old
  checkpoints, which would restore the old scheduler and mix two methods in one model.
- A lock (`run.lock`, held with `fcntl.flock` for the life of the process) makes a second training into the same
  folder fail at once, naming the process that holds it, instead of interleaving checkpoints. The operating system
  releases it when the process ends, however it ends, so a killed run leaves no stale lock behind.
- [`last_good_checkpoint`] skips a checkpoint a kill left half-written (no readable `trainer_state.json`, which
  transformers writes last, or truncated weights) and resumes from the one before it.
"""

import errno
import fcntl
import json
import logging
import os
import re
import struct
import zipfile
from typing import Any


logger = logging.getLogger(__name__)

SETTINGS_FILE = "run_settings.json"
LOCK_FILE = "run.lock"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")

# `TrainingArguments` fields a resumed run may change: the step budget, bookkeeping, logging, the Hub and the
# hardware. Every other field changes what is trained, so a resume with another value is refused.
_RESUMABLE_FIELDS = {
    "output_dir",
    "resume_from_checkpoint",
    "max_steps",
    "num_train_epochs",
    "report_to",
    "run_name",
    "project",
    "push_to_hub",
    "disable_tqdm",
    "local_rank",
    "use_cpu",
    "tf32",
    "deepspeed",
    "fsdp",
    "fsdp_config",
    "accelerator_config",
    "parallelism_config",
    "skip_memory_metrics",
    "log_completions",
    "num_completions_to_print",
    "do_train",
    "do_eval",
    "do_predict",
    "per_device_eval_batch_size",
    "num_generations_eval",
    "dataloader_num_workers",
    "dataloader_pin_memory",
    "dataloader_persistent_workers",
    "dataloader_prefetch_factor",
    "dataloader_multiprocessing_context",
}
_RESUMABLE_PREFIXES = ("save_", "logging_", "log_", "hub_", "eval_", "trackio_", "ddp_", "torch_compile", "vllm_")


class RunFolderError(RuntimeError):
    """The output folder belongs to another run: other settings, or a training that is still running."""


def training_settings(args: Any) -> dict[str, Any]:
    """
    The settings of `args` (a `TrainingArguments`, e.g. [`VARGRPOConfig`]) that a resumed run must keep: every field
    but the step budget, bookkeeping, logging, Hub and hardware ones, as JSON values.
    """
    settings = {
        name: value
        for name, value in args.to_dict().items()
        if name not in _RESUMABLE_FIELDS and not name.startswith(_RESUMABLE_PREFIXES) and not name.endswith("_token")
    }
    return json.loads(json.dumps(settings, default=str))  # as read back from the file: tuples become lists


def check_run_settings(output_dir: str | os.PathLike, settings: dict[str, dict[str, Any]]) -> None:
    """
    Records `settings` in `output_dir/run_settings.json` or, when the folder already records a run, checks that they
    match it.

    Args:
        output_dir (`str` or `os.PathLike`):
            The run's output folder (created if missing).
        settings (`dict[str, dict[str, Any]]`):
            Groups of settings, e.g. `{"training": training_settings(args), "script": {...}}`. A group the file does
            not record yet is added to it; a group it records must match field by field.

    Raises:
        [`RunFolderError`]: naming every field that differs (recorded and new value) and how to start over or resume
        anyway.
    """
    path = os.path.join(output_dir, SETTINGS_FILE)
    settings = json.loads(json.dumps(settings, default=str))
    recorded: dict[str, dict[str, Any]] = {}
    if os.path.exists(path):
        try:
            with open(path) as file:
                recorded = json.load(file)
        except (OSError, ValueError) as error:
            raise RunFolderError(
                f"{path} is unreadable ({type(error).__name__}: {error}). Delete it to resume with the current "
                f"settings, or use another --output_dir."
            ) from error
    differences = []
    for group, values in settings.items():
        old = recorded.get(group)
        if old is None:
            continue
        for name in sorted(set(old) | set(values)):
            if old.get(name, "<unset>") != values.get(name, "<unset>"):
                differences.append(f"{name}: {old.get(name, '<unset>')!r} -> {values.get(name, '<unset>')!r}")
    if differences:
        raise RunFolderError(
            f"{output_dir} holds a run with other settings ({'; '.join(differences)}; recorded in {path}). Resuming "
            f"it would continue the old run (its scheduler, its method) under the new settings. To start over, use "
            f"another --output_dir or delete {output_dir}; to resume anyway with the new settings, delete {path}."
        )
    if recorded.keys() >= settings.keys():
        return
    os.makedirs(output_dir, exist_ok=True)
    temporary = f"{path}.tmp"
    with open(temporary, "w") as file:
        json.dump({**recorded, **settings}, file, indent=2, sort_keys=True)
    os.replace(temporary, path)  # a kill mid-write leaves the old file or the new one, never half of one


_held_locks: dict[str, int] = {}


def lock_output_dir(output_dir: str | os.PathLike) -> None:
    """
    Takes the lock of `output_dir` (created if missing) for this process, until [`unlock_output_dir`] or the end of
    the process. Taking a lock this process already holds does nothing.

    Raises:
        [`RunFolderError`]: when another process holds it, naming the folder and that process (pid and command line).
    """
    folder = os.path.realpath(output_dir)
    if folder in _held_locks:
        return
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, LOCK_FILE)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        os.close(descriptor)
        if error.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise
        raise RunFolderError(
            f"Another training is writing to {folder}: {_lock_holder(path)} holds {path}. Wait for it to finish or "
            f"stop it, or use another --output_dir."
        ) from None
    os.ftruncate(descriptor, 0)
    os.write(descriptor, f"{os.getpid()}\n".encode())
    _held_locks[folder] = descriptor


def unlock_output_dir(output_dir: str | os.PathLike) -> None:
    """Releases the lock [`lock_output_dir`] took on `output_dir`, if this process holds it."""
    descriptor = _held_locks.pop(os.path.realpath(output_dir), None)
    if descriptor is not None:
        os.close(descriptor)  # closing the descriptor releases the flock


def _lock_holder(path: str) -> str:
    try:
        with open(path) as file:
            pid = int(file.read().split()[0])
    except (OSError, ValueError, IndexError):
        return "another process"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            command = file.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        command = ""
    return f"process {pid}" + (f" ({command})" if command else "")


def check_weights_file(path: str | os.PathLike) -> str | None:
    """
    Why the weights file at `path` cannot be loaded, or `None` when it looks whole. A `.safetensors` file must hold
    its header and every tensor the header announces (a truncated file does not); a `torch.save` file (`.pt`,
    `.pth`, `.bin`) must be a complete zip archive. Reads the header and the file size, never the tensors.
    """
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        if path.endswith(".safetensors"):
            with open(path, "rb") as file:
                prefix = file.read(8)
                if len(prefix) < 8:
                    return f"{size} bytes, shorter than a safetensors header"
                (header_size,) = struct.unpack("<Q", prefix)
                if 8 + header_size > size:
                    return f"truncated: the header announces {header_size} bytes, the file has {size}"
                header = json.loads(file.read(header_size))
            end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
            if 8 + header_size + end > size:
                return f"truncated: {size} bytes where its tensors need {8 + header_size + end}"
        elif path.endswith((".pt", ".pth", ".bin")) and not zipfile.is_zipfile(path):
            return "truncated or not a torch.save archive"
    except (OSError, ValueError, KeyError, TypeError, IndexError) as error:
        return f"unreadable ({type(error).__name__}: {error})"
    return None


def check_checkpoint(checkpoint: str | os.PathLike) -> str | None:
    """
    Why `checkpoint` (a `checkpoint-N` folder of a `Trainer`) cannot be resumed from, or `None` when it can: a missing
    or unreadable `trainer_state.json` (written last, so a kill during the save leaves it out) or a weights file that
    [`check_weights_file`] rejects, named.
    """
    state = os.path.join(checkpoint, "trainer_state.json")
    try:
        with open(state) as file:
            json.load(file)
    except FileNotFoundError:
        return f"no {os.path.basename(state)} (a save that did not finish)"
    except (OSError, ValueError) as error:
        return f"unreadable {state} ({type(error).__name__}: {error})"
    for name in sorted(os.listdir(checkpoint)):
        problem = check_weights_file(os.path.join(checkpoint, name))
        if problem is not None:
            return f"{os.path.join(checkpoint, name)} is {problem}"
    return None


def last_good_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """
    The newest `checkpoint-N` folder of `output_dir` that can be resumed from ([`check_checkpoint`]), or `None`. Each
    newer one skipped is named in a warning with what is wrong with it.
    """
    if not os.path.isdir(output_dir):
        return None
    steps = sorted(
        (int(match.group(1)), name)
        for name in os.listdir(output_dir)
        if (match := _CHECKPOINT.match(name)) and os.path.isdir(os.path.join(output_dir, name))
    )
    for _, name in reversed(steps):
        checkpoint = os.path.join(output_dir, name)
        problem = check_checkpoint(checkpoint)
        if problem is None:
            return checkpoint
        logger.warning(f"Skipping the checkpoint {checkpoint}: {problem}. Resuming from the one before it, if any.")
    return None
