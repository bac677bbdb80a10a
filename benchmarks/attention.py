"""
Block-causal attention without an S x S mask against the dense-mask path it replaced: time and peak memory of one
teacher-forced forward + backward (the log-probs of every image token, summed, backpropagated) of both families.

The dense reference lives here only: `BlockCausalLayout.for_scales` is wrapped so that the models receive the
equivalent dense mask instead of the layout. VAR gets the additive `(B, 1, S, S)` mask its backbone used to build
(the attention function falls back to transformers' SDPA on a tensor mask); Infinity gets the `(S, S)` boolean mask
it used to build, and its self-attention runs one SDPA call over it.

Peak memory is measured: every (model, path) runs in a fresh child process, whose peak RSS (`ru_maxrss`) after the
pass minus its RSS just before the pass (model, inputs and imports loaded) is the pass's peak. The time is that of a
second pass in the same process. Each model also has an "attention" row: one attention call of its shape (one
layer's queries, keys and values over the whole sequence, the mask or layout built inside), forward + backward, which
isolates what the two paths differ in from the rest of the pass. CPU, fp32.

    python benchmarks/attention.py [--json benchmarks/results/attention.json] [--models nextflow-halved ...]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F


MODELS = ("nextflow-halved", "nextflow-full", "infinity-1024")
PATHS = ("dense", "new")
PARTS = ("model", "attention")  # the whole teacher-forced pass; one attention call of the same shape
BATCH, TEXT_TOKENS, TEXT_PADDING = 2, 16, 4  # the second row's prompt is left-padded by TEXT_PADDING


def dense_mask(layout, num_queries: int, dtype: torch.dtype | None) -> torch.Tensor:
    """
    The dense mask equal to `layout` (all its queries, no cache): boolean `(1, 1, S, S)` when `dtype` is None (no
    padding), else additive `(B, 1, S, S)` of `dtype` (0 where allowed, the dtype's minimum elsewhere).
    """
    allowed = torch.zeros(num_queries, num_queries, dtype=torch.bool)
    p = layout.text_queries
    allowed[:p, :p] = torch.ones(p, p, dtype=torch.bool).tril()
    for query_start, query_end, key_end in layout.blocks:
        allowed[query_start:query_end, :key_end] = True
    allowed = allowed[None, None]
    if layout.key_padding is not None:  # a padding query sees itself only, as in the layout
        padding = ~layout.key_padding[:, None, None, :num_queries]
        allowed = allowed & ~padding
        allowed = allowed | (torch.eye(num_queries, dtype=torch.bool)[None, None] & padding.transpose(-1, -2))
    if dtype is None:
        return allowed
    mask = torch.zeros(allowed.shape, dtype=dtype)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)


def use_dense_masks(family: str):
    """Make the models of `family` build dense masks from their block layouts (this process only)."""
    from trl_var.models.block_attention import BlockCausalLayout
    from trl_var.models.infinity import modeling_infinity

    layout_for_scales = BlockCausalLayout.for_scales.__func__

    def dense_for_scales(cls, scale_lengths, text_mask=None, past_length=0):
        layout = layout_for_scales(cls, scale_lengths, text_mask, past_length)
        num_queries = sum(scale_lengths) + (0 if text_mask is None else text_mask.shape[1])
        return dense_mask(layout, num_queries, None if family == "infinity" else torch.float32)

    BlockCausalLayout.for_scales = classmethod(dense_for_scales)
    modeling_infinity.block_causal_attention = lambda q, k, v, mask, scale=None: F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, scale=scale
    )


def build(name: str):
    """The model, its inputs and a description of its shape."""
    torch.manual_seed(0)
    if name.startswith("nextflow"):
        from trl_var import VARForImageGeneration
        from trl_var.models.presets import nextflow_shaped_config
        from trl_var.models.var.configuration_var import NEXTFLOW_1024_SCALE_SIDES, VARConfig

        config = nextflow_shaped_config()
        if name == "nextflow-full":  # NextFlow's own 18 scales: the same backbone, a 256 px tokenizer
            vq_config = {**config.vq_config, "sample_size": 256}
            vq_config["scale_schedule"] = [[side, side] for side in NEXTFLOW_1024_SCALE_SIDES]
            config = VARConfig(text_config=config.text_config.to_dict(), vq_config=vq_config)
        model = VARForImageGeneration(config)
        text = config.text_config
        shape = (
            f"Qwen2 {text.num_hidden_layers} x {text.hidden_size}, {text.num_attention_heads} heads "
            f"({text.num_key_value_heads} kv), codebook {config.vq_config['codebook_size']}, "
            f"{len(config.scale_schedule)} scales, + {TEXT_TOKENS} text tokens"
        )
        codes = config.vq_config["codebook_size"]
        vocab = text.vocab_size
    else:
        from trl_var.models.infinity import InfinityConfig, InfinityForImageGeneration
        from trl_var.models.infinity.configuration_infinity import INFINITY_1024_SCALE_SIDES

        config = InfinityConfig(
            text_config={"model_type": "t5", "d_model": 64, "d_kv": 16, "d_ff": 128, "num_layers": 1,
                         "num_heads": 4, "vocab_size": 128, "is_encoder_decoder": False},
            hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_block_chunks=1, codebook_dim=16,
            text_max_length=TEXT_TOKENS, text_pool_num_heads=2,
            scale_schedule=[[side, side] for side in INFINITY_1024_SCALE_SIDES],
            vae_config={"codebook_dim": 16, "block_out_channels": [32, 32], "num_res_blocks": 0, "patch_size": 2},
        )  # fmt: skip
        model = InfinityForImageGeneration(config)
        shape = (
            f"Infinity {config.num_hidden_layers} x {config.hidden_size}, {config.num_attention_heads} heads, "
            f"{config.codebook_dim} bits, {len(config.scale_schedule)} scales, {TEXT_TOKENS} T5 tokens cross-attended"
        )
        codes, vocab = 2**config.codebook_dim, 128
    model.train()
    input_ids = torch.randint(3, vocab, (BATCH, TEXT_TOKENS))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :TEXT_PADDING] = 0
    image_ids = torch.randint(0, codes, (BATCH, model.num_image_tokens))
    return model, (input_ids, image_ids, attention_mask), shape


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def attention_step(model, attention_mask: torch.Tensor, path: str):
    """
    One attention call of `model`'s shape (one layer's queries, keys and values, its layout), forward + backward: the
    dense path builds its mask in the step, as the models did in every pass.
    """
    from trl_var.models.block_attention import BlockCausalLayout, block_causal_attention

    infinity = hasattr(model, "blocks")
    config = model.config if infinity else model.config.text_config
    heads = config.num_attention_heads
    kv_heads = heads if infinity else config.num_key_value_heads
    head_dim = config.hidden_size // heads
    text_mask = None if infinity else attention_mask
    num_queries = model.num_image_tokens + (0 if infinity else attention_mask.shape[1])
    q = torch.randn(BATCH, heads, num_queries, head_dim, requires_grad=True)
    k, v = (torch.randn(BATCH, kv_heads, num_queries, head_dim, requires_grad=True) for _ in range(2))

    def step():
        layout = BlockCausalLayout.for_scales(model.scale_token_counts, text_mask)
        if path == "dense":
            mask = dense_mask(layout, num_queries, None if infinity else torch.float32)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=kv_heads != heads)
        else:
            out = block_causal_attention(q, k, v, layout)
        out.sum().backward()
        q.grad = k.grad = v.grad = None

    return step


def child(name: str, path: str, part: str) -> dict:
    """
    One forward + backward of `name` (the whole model, or one attention call of its shape) on `path` in this fresh
    process: the first's peak memory, the second's time.
    """
    if path == "dense" and part == "model":
        use_dense_masks("infinity" if name.startswith("infinity") else "var")
    model, (input_ids, image_ids, attention_mask), shape = build(name)

    def model_step():
        logprobs, _ = model.image_token_logprobs(input_ids, image_ids, attention_mask)
        logprobs.sum().backward()
        model.zero_grad(set_to_none=True)

    step = model_step if part == "model" else attention_step(model, attention_mask, path)

    baseline = rss_kb()
    step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline
    start = time.perf_counter()
    step()
    seconds = time.perf_counter() - start
    return {"tokens": model.num_image_tokens, "shape": shape, "seconds": seconds, "peak_mb": peak / 1024}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default="benchmarks/results/attention.json")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "PATH", "PART"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return

    rows = []
    for name, part in ((name, part) for name in args.models for part in PARTS):
        runs = {}
        for path in PATHS:
            command = [sys.executable, __file__, "--child", name, path, part]
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode:
                sys.exit(f"{name} ({path}, {part}) failed:\n{result.stderr}")
            runs[path] = json.loads(result.stdout.strip().splitlines()[-1])
            print(f"{name} ({path}, {part}): {runs[path]}", file=sys.stderr)
        rows.append(
            {
                "model": name,
                "part": part,
                "shape": runs["new"]["shape"],
                "tokens": runs["new"]["tokens"],
                "batch": BATCH,
                "dense_s": runs["dense"]["seconds"],
                "new_s": runs["new"]["seconds"],
                "dense_peak_mb": runs["dense"]["peak_mb"],
                "new_peak_mb": runs["new"]["peak_mb"],
            }
        )

    print(f"teacher-forced forward + backward, fp32, CPU ({torch.get_num_threads()} threads), batch {BATCH}")
    header = (
        f"{'model':16} {'part':9} {'image tokens':>12} {'dense s':>8} {'new s':>7} {'speedup':>7} "
        f"{'dense MB':>9} {'new MB':>8} {'memory /':>8}  shape"
    )
    print(f"{header}\n{'-' * len(header)}")
    for r in rows:
        print(
            f"{r['model']:16} {r['part']:9} {r['tokens']:>12,} {r['dense_s']:>8.2f} {r['new_s']:>7.2f} "
            f"{r['dense_s'] / r['new_s']:>6.2f}x {r['dense_peak_mb']:>9.0f} {r['new_peak_mb']:>8.0f} "
            f"{r['dense_peak_mb'] / r['new_peak_mb']:>7.1f}x  {r['shape']}"
        )
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"threads": torch.get_num_threads(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
