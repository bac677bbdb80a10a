"""Synthetic renders of short words: the pretraining data of the tiny text-rendering model (made locally, no Hub)."""

import random
from dataclasses import dataclass, field

from datasets import Dataset
from PIL import Image, ImageDraw, ImageFont

from .text_render import DEFAULT_ALPHABET, DEFAULT_TEMPLATES, HELDOUT_WORDS


DEJAVU = "/usr/share/fonts/truetype/dejavu/"


@dataclass
class RenderStyle:
    """
    How much a render varies besides its word. Nuisance variation (position, size, colour, font) is what a small model
    learns first, at the coarse scales, and it keeps the model from binding the prompt's letters to the glyphs; it
    also spends the capacity of a tiny tokenizer on things no reward asks for. So the defaults are the
    reduced-nuisance setting: centred +-2 px, one size, 4 colour pairs, one font. The measurements behind this
    choice are in BENCHMARKS.md ("The toy's data and tokenizer").

    Args:
        size (`int`): image side in pixels.
        font_sizes (`tuple[int, int]`): smallest and largest font size (inclusive).
        jitter (`int`): largest shift of the text centre, in pixels, in each direction.
        colors (`tuple`): (background, text) RGB pairs to pick from.
        fonts (`tuple[str, ...]`): font files (DejaVu is installed with the system).
    """

    size: int = 64
    font_sizes: tuple[int, int] = (22, 22)
    jitter: int = 2
    colors: tuple = (
        ((255, 255, 255), (0, 0, 0)),
        ((0, 0, 0), (255, 255, 255)),
        ((255, 240, 200), (150, 20, 20)),
        ((200, 225, 255), (10, 40, 120)),
    )
    fonts: tuple[str, ...] = field(default_factory=lambda: (DEJAVU + "DejaVuSans-Bold.ttf",))


def render_word(word: str, style: RenderStyle, rng: random.Random) -> Image.Image:
    """One render of `word`: centred (up to `style.jitter` px off), a size, a colour pair and a font drawn by `rng`."""
    background, ink = rng.choice(style.colors)
    font = ImageFont.truetype(rng.choice(style.fonts), rng.randint(*style.font_sizes))
    image = Image.new("RGB", (style.size, style.size), background)
    centre = (
        style.size / 2 + rng.randint(-style.jitter, style.jitter),
        style.size / 2 + rng.randint(-style.jitter, style.jitter),
    )
    ImageDraw.Draw(image).text(centre, word, fill=ink, font=font, anchor="mm")
    return image


def make_render_dataset(
    num_images: int,
    word_length: int | tuple[int, int] = 3,
    alphabet: str = DEFAULT_ALPHABET,
    style: RenderStyle | None = None,
    templates: tuple[str, ...] = DEFAULT_TEMPLATES,
    exclude_words: tuple[str, ...] | frozenset[str] = HELDOUT_WORDS,
    seed: int = 0,
) -> Dataset:
    """
    Renders of random words with the prompts that ask for them: columns `prompt`, `text` (the word) and `image`.

    `exclude_words` (by default the held-out evaluation words) keeps words out of the pretraining data. The same seed
    gives the same data.
    """
    style = style or RenderStyle()
    low, high = (word_length, word_length) if isinstance(word_length, int) else word_length
    possible = sum(len(set(alphabet)) ** n for n in range(low, high + 1))
    exclude_words = {w for w in exclude_words if low <= len(w) <= high and set(w) <= set(alphabet)}
    if len(exclude_words) >= possible:
        raise ValueError(f"`exclude_words` ({len(exclude_words)}) leaves no word of length <= {high} to render.")
    rng = random.Random(seed)
    rows = {"prompt": [], "text": [], "image": []}
    while len(rows["text"]) < num_images:
        word = "".join(rng.choice(alphabet) for _ in range(rng.randint(low, high)))
        if word in exclude_words:
            continue
        rows["prompt"].append(rng.choice(templates).format(word=word))
        rows["text"].append(word)
        rows["image"].append(render_word(word, style, rng))
    return Dataset.from_dict(rows)
