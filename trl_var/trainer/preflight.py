"""
Checks a training run makes before it samples anything, so that a run that cannot learn, or cannot load what it was
given, says so at once instead of failing deep inside (or finishing having learned nothing):

- [`check_prefix_scales`]: `vmr_prefix_scales` fits the model's scales (read from its config, before anything loads);
- [`load_policy`]: the model folder exists, its weights are whole, it is a next-scale policy;
- [`check_enough_prompts`]: the dataset fills at least one optimizer step;
- [`warn_unknown_characters`]: the text tokenizer knows every character of the prompts;
- [`create_hub_repository`]: the Hub repository of `push_to_hub` can be created, before training rather than after.
"""

import logging
import os
from collections.abc import Sequence
from typing import Any

from ..data.loading import looks_like_local_path
from ..models.protocol import check_policy
from .credit import quarter_resolution_prefix
from .run_folder import check_weights_file


logger = logging.getLogger(__name__)


def load_policy(model_name_or_path: str | os.PathLike, **model_kwargs) -> tuple[Any, Any]:
    """
    Loads a next-scale policy and its tokenizer (left padding) from a local folder or a Hub id.

    Raises:
        `FileNotFoundError`: for a path that is no local folder (said before the Hub is tried: a relative path like
        `outputs/run` also reads as a Hub id), or one neither the folder nor the Hub has. `ValueError`: naming a
        truncated or unreadable weights file. `TypeError`: for a model of another type (e.g. a language model), naming
        the supported types.
    """
    from transformers import AutoModel, AutoTokenizer

    path = os.fspath(model_name_or_path)
    if os.path.isdir(path):
        for name in sorted(os.listdir(path)):
            if name.endswith(".safetensors"):
                problem = check_weights_file(os.path.join(path, name))
                if problem is not None:
                    raise ValueError(
                        f"The weights file {os.path.join(path, name)} is {problem}: copy or save the model again."
                    )
    elif looks_like_local_path(path):
        raise FileNotFoundError(f"No such local model folder: {path!r} (resolved to {os.path.abspath(path)}).")
    else:
        logger.warning(f"No local folder {os.path.abspath(path)}: loading {path!r} as a Hub id.")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
        model = AutoModel.from_pretrained(path, **model_kwargs)
    except OSError as error:
        where = (
            f"the folder {os.path.abspath(path)}"
            if os.path.isdir(path)
            else (f"{path!r}: no local folder ({os.path.abspath(path)}) nor a reachable or cached Hub repository")
        )
        raise FileNotFoundError(f"Could not load a model and tokenizer from {where} ({error}).") from error
    check_policy(model)
    return model, tokenizer


def prompts_per_step(args: Any) -> int:
    """Distinct prompts one generation round of GRPO samples: `generation_batch_size / num_generations`."""
    return args.generation_batch_size // args.num_generations


def check_enough_prompts(num_prompts: int, args: Any) -> None:
    """
    Raises a `ValueError` when a dataset of `num_prompts` prompts cannot fill one generation round of `args` (a
    [`VARGRPOConfig`]): TRL's sampler then yields no batch, and training ends after 0 optimizer steps.
    """
    needed = prompts_per_step(args)
    if num_prompts < needed:
        raise ValueError(
            f"The dataset has {num_prompts} prompt(s), but one step samples {needed}: generation_batch_size "
            f"{args.generation_batch_size} images (per_device_train_batch_size {args.per_device_train_batch_size} x "
            f"processes x steps_per_generation {args.steps_per_generation}) / num_generations {args.num_generations}. "
            f"Training would make 0 optimizer steps: add prompts or lower per_device_train_batch_size."
        )


def unknown_characters(tokenizer: Any, prompts: Sequence[str]) -> dict[str, str]:
    """
    The characters of each prompt that `tokenizer` turns into its unknown token, `{prompt: characters}` for the
    prompts that have any (empty when the tokenizer has no unknown token, e.g. a byte-level one).
    """
    unk = tokenizer.unk_token_id
    if unk is None:
        return {}
    characters = {char for prompt in prompts for char in prompt if not char.isspace()}
    unknown = {char for char in characters if unk in tokenizer(char, add_special_tokens=False)["input_ids"]}
    found = {}
    for prompt in prompts:
        chars = "".join(sorted({char for char in prompt if char in unknown}))
        if chars:
            found[prompt] = chars
    return found


def warn_unknown_characters(tokenizer: Any, prompts: Sequence[str]) -> dict[str, str]:
    """
    Warns, naming the prompts (the first 5) and the characters, when the tokenizer does not know characters of the
    prompts: they reach the model as the unknown token, so a word written with them cannot be learned. Returns
    [`unknown_characters`].
    """
    found = unknown_characters(tokenizer, prompts)
    if found:
        shown = "; ".join(f"{prompt!r}: {chars!r}" for prompt, chars in list(found.items())[:5])
        logger.warning(
            f"{len(found)} of {len(prompts)} prompts have characters the text tokenizer does not know, which reach "
            f"the model as {tokenizer.unk_token!r} and cannot be learned: {shown}."
        )
    return found


def create_hub_repository(args: Any) -> str:
    """
    Creates (or finds) the Hub repository `push_to_hub` will push to, `args.hub_model_id` or the output folder's name,
    before training: a failure names the repository, the endpoint and that it came from creating the repository.
    Returns the repository id.
    """
    from huggingface_hub import HfApi

    name = args.hub_model_id or os.path.basename(os.path.abspath(args.output_dir))
    try:
        url = HfApi().create_repo(name, token=args.hub_token, private=args.hub_private_repo, exist_ok=True)
    except Exception as error:
        raise RuntimeError(hub_repository_error_message(name, error)) from error
    return url.repo_id


def hub_repository_error_message(repo_id: str, error: Exception) -> str:
    """What to say when creating the Hub repository `repo_id` failed with `error`: the repository, the endpoint, why."""
    from huggingface_hub import constants

    return (
        f"Could not create the Hub repository {repo_id!r} at {constants.ENDPOINT} for `push_to_hub` "
        f"({type(error).__name__}: {error}). Check the network and your token (`hf auth login`), or train "
        f"without --push_to_hub and upload later with `hf upload`."
    )


def resolve_prefix_scales(scale_schedule, requested: int | None) -> int:
    """
    The number of VMR prefix scales for `scale_schedule`: `requested` (`vmr_prefix_scales`), or by default the
    paper's quarter-side split (0, VMR off, with a warning, when the schedule has none).

    Raises:
        `ValueError`: when `requested` leaves no suffix scale, naming the field, the value and the valid range.
    """
    num_scales = len(scale_schedule)
    if requested is None:
        prefix_scales = quarter_resolution_prefix(scale_schedule)
        if not 0 < prefix_scales < num_scales:
            logger.warning(
                f"No quarter-resolution split exists for the schedule {scale_schedule}: VMR is off. Set "
                "`vmr_prefix_scales` to use it."
            )
            return 0
        return prefix_scales
    if requested >= num_scales:
        raise ValueError(
            f"`vmr_prefix_scales` is {requested}, but the model has {num_scales} scales: the prefix must leave a "
            f"suffix, so use 1..{num_scales - 1} (or 0 to turn VMR off, None for the paper's quarter-side split)."
        )
    return requested


def check_prefix_scales(model_name_or_path: str | os.PathLike, requested: int | None) -> None:
    """
    Raises [`resolve_prefix_scales`]'s `ValueError` when `vmr_prefix_scales` (`requested`) does not fit the scales of
    the model, read from its config alone: before its weights load or anything is written. A config that cannot be
    read is left for [`load_policy`] to report.
    """
    from transformers import AutoConfig

    path = os.fspath(model_name_or_path)
    if requested is None or (not os.path.isdir(path) and looks_like_local_path(path)):
        return
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError):
        return
    # another model type has no scales: `load_policy` names the supported types
    scale_schedule = getattr(config, "scale_schedule", None)
    if scale_schedule is not None:
        resolve_prefix_scales(scale_schedule, requested)
