"""Synthetic text-rendering prompts: the training data of the CPU toy task, made locally (no Hub)."""

import itertools
import random
from collections.abc import Sequence

from datasets import Dataset


# Letters Tesseract rarely confuses in small renders (no I/J/L/T look-alikes, which it misreads for one another);
# 10 of them keep the toy task learnable on a CPU.
DEFAULT_ALPHABET = "ACEHKMNRSX"

# Every template ends with the quoted word: with left-padded prompts the letters then sit at the same distance from
# the image tokens in every prompt, which is what lets a sub-million-parameter model on a CPU bind the glyphs it draws
# to the letters it is asked for, the hard part of the toy (BENCHMARKS.md, "The toy's data and tokenizer").
DEFAULT_TEMPLATES = (
    'the word "{word}"',
    'a sign that says "{word}"',
    'bold letters that read "{word}"',
    'a plain background with the text "{word}"',
)

# Held-out evaluation words: 100 of the 1,000 three-letter words of `DEFAULT_ALPHABET`, drawn once with
# `random.Random(2601).sample` and fixed here. Never in pretraining renders nor in RL training prompts.
HELDOUT_WORDS = tuple(
    (
        "AAC AAM AAR ACS ACX AMA AMK AMN ARS ASX AXE AXK CCR CKN CKX CMA CMN CNH CNR CSS CXR CXS EAA EAC EAR "
        "ECE ECX EEM EHE EHH EHM EMH EXH HCM HNE HNN HRA HSA HSS KAK KAM KKE KKM KRE KSE MAA MAE MAM MER MES "
        "MMC MME MMX MNK MRC MRN MSA MXR NCR NHC NHK NHR NHS NKH NKN NRM NRX NSS NXH RAS RCM REE RKK RMA RMX "
        "RNR RSX RXC RXK SAK SHH SHR SHS SKE SMR SXN XAA XAE XAR XEN XHH XMS XRE XRR XSC XSK XSR XXK XXN XXX"
    ).split()
)


def make_word_prompts(words: Sequence[str], templates: tuple[str, ...] = DEFAULT_TEMPLATES) -> Dataset:
    """Fixed evaluation prompts: every word of `words` once, in order, templates in turn. Columns `prompt` and `text`."""
    prompts = [templates[i % len(templates)].format(word=word) for i, word in enumerate(words)]
    return Dataset.from_dict({"prompt": prompts, "text": list(words)})


def make_heldout_dataset(templates: tuple[str, ...] = DEFAULT_TEMPLATES) -> Dataset:
    """The fixed held-out evaluation prompts of the toy task: [`make_word_prompts`] of `HELDOUT_WORDS`."""
    return make_word_prompts(HELDOUT_WORDS, templates)


def validation_words(word_length: int = 3, num_words: int = 200, seed: int = 777) -> tuple[str, ...]:
    """
    Words of the training distribution (`DEFAULT_ALPHABET`, `word_length` letters; never a held-out word) on which
    settings are chosen: a run that validates on them keeps them out of its RL prompts, so that, as on the held-out
    words, a setting is judged on words the policy never trained on, and the held-out words stay for the report.
    `num_words` of them, drawn with `random.Random(seed)` from the sorted candidates.
    """
    every_word = map("".join, itertools.product(DEFAULT_ALPHABET, repeat=word_length))
    words = sorted(set(every_word) - set(HELDOUT_WORDS))
    if len(words) < num_words:
        raise ValueError(f"`num_words`: {len(words)} words of length {word_length} left, too few for {num_words}.")
    return tuple(random.Random(seed).sample(words, num_words))


def make_text_render_dataset(
    num_prompts: int = 256,
    word_length: int | tuple[int, int] = 3,
    alphabet: str = DEFAULT_ALPHABET,
    templates: tuple[str, ...] = DEFAULT_TEMPLATES,
    exclude_words: tuple[str, ...] | frozenset[str] = HELDOUT_WORDS,
    seed: int = 0,
) -> Dataset:
    """
    Prompts asking for one quoted word each, e.g. `a sign that says "ACE"`, with the word in a `text` column.

    Args:
        num_prompts (`int`, defaults to 256): number of rows.
        word_length (`int` or `(min, max)`, defaults to 3): letters per word.
        alphabet (`str`): letters to draw from.
        templates (`tuple[str, ...]`): prompt templates with a `{word}` field.
        exclude_words (`tuple[str, ...]`, defaults to `HELDOUT_WORDS`): words never drawn (the held-out ones).
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
    # only the words that could be drawn count (the held-out 3-letter words do not restrict 2-letter prompts)
    excluded = {w for w in exclude_words if low <= len(w) <= high and set(w) <= set(alphabet)}
    if len(excluded) >= sum(len(set(alphabet)) ** n for n in range(low, high + 1)):
        raise ValueError(f"`exclude_words` ({len(excluded)} words) leaves no word of length {low}-{high} to draw.")
    rng = random.Random(seed)
    words = []
    while len(words) < num_prompts:
        word = "".join(rng.choice(alphabet) for _ in range(rng.randint(low, high)))
        if word not in excluded:
            words.append(word)
    prompts = [rng.choice(templates).format(word=word) for word in words]
    return Dataset.from_dict({"prompt": prompts, "text": words})
