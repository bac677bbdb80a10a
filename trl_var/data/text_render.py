"""Synthetic text-rendering prompts: the training data of the CPU toy task, made locally (no Hub)."""

import random

from datasets import Dataset


# Letters Tesseract rarely confuses in small renders (no I/J/L/T look-alikes, see NOTES.md); 10 of them keep the
# toy task learnable on a CPU.
DEFAULT_ALPHABET = "ACEHKMNRSX"

DEFAULT_TEMPLATES = (
    'the word "{word}"',
    'a sign that says "{word}"',
    'the text "{word}" in bold letters',
    '"{word}" written on a plain background',
)


def make_text_render_dataset(
    num_prompts: int = 256,
    word_length: int | tuple[int, int] = 3,
    alphabet: str = DEFAULT_ALPHABET,
    templates: tuple[str, ...] = DEFAULT_TEMPLATES,
    seed: int = 0,
) -> Dataset:
    """
    Prompts asking for one quoted word each, e.g. `a sign that says "ACE"`, with the word in a `text` column.

    Args:
        num_prompts (`int`, defaults to 256): number of rows.
        word_length (`int` or `(min, max)`, defaults to 3): letters per word.
        alphabet (`str`): letters to draw from.
        templates (`tuple[str, ...]`): prompt templates with a `{word}` field.
        seed (`int`, defaults to 0): the same seed gives the same dataset.

    Returns:
        A `datasets.Dataset` with columns `prompt` and `text` (the word, also the double-quoted span of the prompt,
        which is what [`~trl_var.rewards.OCRReward`] reads by default).
    """
    if num_prompts < 1:
        raise ValueError(f"`num_prompts` must be >= 1, got {num_prompts}.")
    low, high = (word_length, word_length) if isinstance(word_length, int) else word_length
    if not 1 <= low <= high:
        raise ValueError(f"`word_length` must be >= 1 (or a (min, max) range), got {word_length}.")
    if not alphabet:
        raise ValueError("`alphabet` is empty.")
    bad = [t for t in templates if "{word}" not in t]
    if bad:
        raise ValueError(f"Every template needs a '{{word}}' field; these have none: {bad}.")
    rng = random.Random(seed)
    words = ["".join(rng.choice(alphabet) for _ in range(rng.randint(low, high))) for _ in range(num_prompts)]
    prompts = [rng.choice(templates).format(word=word) for word in words]
    return Dataset.from_dict({"prompt": prompts, "text": words})
