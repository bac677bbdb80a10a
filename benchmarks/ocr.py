"""
OCR reward throughput: `OCRReward` with its thread pool (one tesseract process per image, OMP_THREAD_LIMIT=1) vs one
image at a time, on 64x64 renders of 3-letter words (the toy task) and on 512x512 images with two words.

    python benchmarks/ocr.py [--json benchmarks/results/ocr.json] [--images 32]
"""

import argparse
import json
import os
import random
import time

from PIL import Image, ImageDraw, ImageFont

from trl_var.rewards import OCRReward


FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"


def render(word: str, size: int, font_size: int) -> Image.Image:
    image = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(image).text(
        (size // 2, size // 2), word, fill="black", font=ImageFont.truetype(FONT, font_size), anchor="mm"
    )
    return image


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default="benchmarks/results/ocr.json")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = random.Random(0)
    words = ["".join(rng.choice("ACEHKMNRSX") for _ in range(3)) for _ in range(args.images)]
    cases = {
        "64px, one word": ([render(w, 64, 22) for w in words], [f'the word "{w}"' for w in words]),
        "512px, two words": (
            [render(f"{w} {w[::-1]}", 512, 64) for w in words],
            [f'a sign that says "{w}" and "{w[::-1]}"' for w in words],
        ),
    }
    rows = []
    for name, (images, prompts) in cases.items():
        row = {"case": name, "images": len(images)}
        for label, workers in (("serial", 1), ("pool", os.cpu_count() or 1)):
            reward = OCRReward(num_workers=workers)
            reward(prompts=prompts[:2], completions=images[:2])  # warm-up
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                scores = reward(prompts=prompts, completions=images)
                times.append(time.perf_counter() - start)
            row[f"{label}_s"] = min(times)
            row["mean_reward"] = sum(scores) / len(scores)
        row["speedup"] = row["serial_s"] / row["pool_s"]
        rows.append(row)
    print(f"{'case':20} {'images':>6} {'serial s':>9} {'pool s':>8} {'speedup':>8} {'reward':>7}   (target >= 1.7x)")
    for r in rows:
        print(
            f"{r['case']:20} {r['images']:>6} {r['serial_s']:>9.2f} {r['pool_s']:>8.2f} {r['speedup']:>8.2f} "
            f"{r['mean_reward']:>7.2f}"
        )
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"cpu_count": os.cpu_count(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
