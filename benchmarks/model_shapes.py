"""
Parameter counts, tokens per image and forward FLOPs of the model presets, built on the meta device (no memory, no
weights): the NextFlow-7B shape of the paper and the tiny CPU model of the recipe.

    python benchmarks/model_shapes.py [--json benchmarks/results/model_shapes.json]
"""

import argparse
import json
import os

import torch

from trl_var import VARForImageGeneration, build_char_tokenizer
from trl_var.models.presets import nextflow_7b_config, tiny_text_render_model


def describe(name: str, model: VARForImageGeneration, prompt_tokens: int = 64) -> dict:
    config = model.config
    text = config.text_config
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    tokenizer = sum(p.numel() for p in model.vqmodel.parameters())
    tokens = config.num_image_tokens
    sequence = prompt_tokens + tokens
    # 2 FLOPs per multiply-add: dense layers see every token once, attention scores cost ~ 2 * 2 * S * S_avg * d per
    # layer with a block-causal mask (about half of the full square).
    dense = 2 * (trainable - text.vocab_size * text.hidden_size) * sequence
    attention = 2 * 2 * text.num_hidden_layers * text.hidden_size * sequence * sequence / 2
    return {
        "model": name,
        "trainable_params": trainable,
        "tokenizer_params": tokenizer,
        "scales": len(config.scale_schedule),
        "image_tokens": tokens,
        "largest_scale_tokens": config.scale_schedule[-1][0] * config.scale_schedule[-1][1],
        "teacher_forced_tflops": (dense + attention) / 1e12,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=None, help="Also write the rows to this JSON file.")
    args = parser.parse_args()
    with torch.device("meta"):
        rows = [
            describe("nextflow-7b (1024px, 18 scales)", VARForImageGeneration(nextflow_7b_config())),
            describe("tiny text-render (64px, 6 scales)", tiny_text_render_model(build_char_tokenizer())),
        ]
    header = f"{'model':36} {'trainable':>12} {'tokenizer':>10} {'scales':>6} {'tokens':>7} {'last':>6} {'TFLOPs':>8}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['model']:36} {r['trainable_params']:>12,} {r['tokenizer_params']:>10,} {r['scales']:>6} "
            f"{r['image_tokens']:>7,} {r['largest_scale_tokens']:>6,} {r['teacher_forced_tflops']:>8.3f}"
        )
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
