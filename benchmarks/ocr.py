"""
The two OCR backends side by side on the same images: Tesseract and PP-OCR (PP-OCRv6-small via RapidOCR).

Three sets of images: renders of the toy's 100 held-out words (64 px, `trl_var.data.render.RenderStyle`, as pretraining
draws them), those renders after a round trip through the shipped tiny model's tokenizer (what a perfect generator of
that model would draw), and 512 px renders of two words. For each engine: exact reads (the words read, joined by spaces,
equal the target, case-insensitive), seconds per image read one at a time, seconds per image through `OCRReward`'s
thread pool (`os.cpu_count()` workers), and the mean reward.

    python benchmarks/ocr.py [--json benchmarks/results/ocr.json] [--images 32] [--backends tesseract ppocr]
"""

import argparse
import json
import os
import platform
import random
import time

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from trl_var import VARForImageGeneration
from trl_var.data import HELDOUT_WORDS
from trl_var.data.render import DEJAVU, RenderStyle, render_word
from trl_var.models.pipeline import images_to_pil
from trl_var.rewards import OCR_BACKENDS, OCRReward, ocr_engine_name, read_text


SHIPPED_MODEL = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "recipes", "models", "var-tiny-text-render"
)


def render_two_words(text: str, size: int = 512, font_size: int = 64) -> Image.Image:
    image = Image.new("RGB", (size, size), "white")
    font = ImageFont.truetype(DEJAVU + "DejaVuSans-Bold.ttf", font_size)
    ImageDraw.Draw(image).text((size // 2, size // 2), text, fill="black", font=font, anchor="mm")
    return image


def reconstruct(images: list[Image.Image]) -> list[Image.Image]:
    """The images after encoding and decoding with the shipped tiny model's tokenizer."""
    vq = VARForImageGeneration.from_pretrained(SHIPPED_MODEL).vqmodel.eval()
    array = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) for image in images])
    pixels = torch.from_numpy(array).permute(0, 3, 1, 2) / 127.5 - 1
    with torch.no_grad():
        return images_to_pil(vq.decode(vq.encode(pixels)))


def make_cases(num_two_word_images: int) -> dict[str, tuple[list[Image.Image], list[str]]]:
    rng = random.Random(0)
    words = list(HELDOUT_WORDS)
    renders = [render_word(word, RenderStyle(), rng) for word in words]
    pairs = [f"{word} {rng.choice(words)}" for word in rng.sample(words, num_two_word_images)]
    return {
        "toy renders (64 px)": (renders, words),
        "tokenizer reconstructions (64 px)": (reconstruct(renders), words),
        "two words (512 px)": ([render_two_words(pair) for pair in pairs], pairs),
    }


def measure(backend: str, images: list[Image.Image], texts: list[str]) -> dict:
    prompts = [" and ".join(f'"{word}"' for word in text.split()) for text in texts]
    for image in images[:2]:  # warm-up: the first PP-OCR call loads its models
        read_text(image, backend=backend)
    start = time.perf_counter()
    reads = [" ".join(word.text for word in read_text(image, backend=backend)) for image in images]
    serial = (time.perf_counter() - start) / len(images)
    reward = OCRReward(backend=backend)
    start = time.perf_counter()
    rewards = reward(prompts=prompts, completions=images)
    pool = (time.perf_counter() - start) / len(images)
    exact = sum(read.upper() == text.upper() for read, text in zip(reads, texts, strict=True))
    return {
        "backend": backend,
        "engine": ocr_engine_name(backend),
        "images": len(images),
        "exact_reads": exact,
        "exact_read_rate": exact / len(images),
        "serial_s_per_image": serial,
        "pool_s_per_image": pool,
        "pool_workers": reward.num_workers,
        "mean_reward": sum(rewards) / len(rewards),
        "misreads": [(text, read) for read, text in zip(reads, texts, strict=True) if read.upper() != text.upper()],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default="benchmarks/results/ocr.json")
    parser.add_argument("--images", type=int, default=32, help="Two-word 512 px images.")
    parser.add_argument("--backends", nargs="+", default=list(OCR_BACKENDS), choices=OCR_BACKENDS)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the tokenizer round trip only; the OCR engines set their own threads

    rows = []
    for case, (images, texts) in make_cases(args.images).items():
        for backend in args.backends:
            rows.append({"case": case, **measure(backend, images, texts)})

    print(
        f"{'case':34} {'engine':36} {'exact reads':>12} {'s/image':>8} {'pool s/image':>13} {'reward':>7}"
        f"   ({rows[0]['pool_workers']} pool workers)"
    )
    for row in rows:
        exact = f"{row['exact_reads']}/{row['images']}"
        print(
            f"{row['case']:34} {row['engine']:36} {exact:>12} {row['serial_s_per_image']:>8.3f} "
            f"{row['pool_s_per_image']:>13.3f} {row['mean_reward']:>7.2f}"
        )
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"cpu_count": os.cpu_count(), "machine": platform.processor(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
