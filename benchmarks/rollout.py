"""
Rollout cost against its limits, on the CPU, fp32, in one process:

1. KV-cached sampling vs one teacher-forced forward over the same tokens (the limit is about 1x);
2. KV-cached sampling vs sampling that recomputes the whole prefix at every scale (how TokenFlow-t2i samples);
3. VMR: K continuations from the prefix's cache vs recomputing the prefix for every continuation.

On a NextFlow-shaped schedule (the 18 scales of 1024px with halved sides: 2,530 tokens) with a small backbone, and on
the tiny recipe model. Prints a table and writes JSON.

    python benchmarks/rollout.py [--json benchmarks/results/rollout.json] [--repeats 3]
"""

import argparse
import json
import os
import platform
import time

import torch

from trl_var import VARForImageGeneration, build_char_tokenizer
from trl_var.models.presets import nextflow_shaped_config, tiny_text_render_config


def best_time(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


@torch.no_grad()
def recompute_rollout(model, input_ids, attention_mask):
    """Sampling without a cache: every scale re-runs the prompt and all previous scales (block-causality makes the
    placeholder tokens of the current scale irrelevant to its own logits)."""
    tokens = input_ids.new_zeros(input_ids.shape[0], 0)
    for h, w in model.scale_schedule:
        placeholder = input_ids.new_zeros(input_ids.shape[0], h * w)
        logits = model(input_ids, torch.cat([tokens, placeholder], 1), attention_mask).logits[:, -h * w :]
        sampled = torch.multinomial(logits.softmax(-1).flatten(0, 1), 1).view(input_ids.shape[0], h * w)
        tokens = torch.cat([tokens, sampled], 1)
    return tokens


def measure(name, config, batch_size, repeats, num_continuations=2, prefix_scales=None):
    torch.manual_seed(0)
    model = VARForImageGeneration(config).eval()
    model.generation_config.update(guidance_scale=1.0, top_k=0, top_p=1.0)  # plain sampling, unless a row says
    input_ids = torch.randint(3, config.text_config.vocab_size, (batch_size, 16))
    mask = torch.ones_like(input_ids)
    tokens = model.generate(input_ids, mask).image_ids
    row = {"model": name, "scales": len(model.scale_schedule), "tokens": model.num_image_tokens, "batch": batch_size}

    with torch.no_grad():
        row["teacher_forced_s"] = best_time(lambda: model(input_ids, tokens, mask), repeats)
        guided_ids, guided_mask = torch.cat([input_ids, input_ids]), torch.cat([mask, torch.zeros_like(mask)])
        row["teacher_forced_2x_batch_s"] = best_time(
            lambda: model(guided_ids, tokens.repeat(2, 1), guided_mask), repeats
        )
    row["cached_rollout_s"] = best_time(lambda: model.generate(input_ids, mask), repeats)
    row["cached_rollout_cfg_s"] = best_time(lambda: model.generate(input_ids, mask, guidance_scale=5.0), repeats)
    row["recompute_rollout_s"] = best_time(lambda: recompute_rollout(model, input_ids, mask), max(1, repeats - 1))

    # VMR: prefix once, K continuations from its cache, vs K full rollouts that recompute the prefix
    m = prefix_scales or sum(1 for h, w in model.scale_schedule if 4 * h <= model.scale_schedule[-1][0])
    k = num_continuations

    def cached_continuations():
        prefix = model.generate(input_ids, mask, num_scales=m)
        return model.generate(state=prefix.state.repeat_interleave_(k))

    def suffix_only():  # the suffix of `batch` rows from a cached prefix (prefix work excluded)
        state = model.generate(input_ids, mask, num_scales=m).state
        start = time.perf_counter()
        model.generate(state=state)
        return time.perf_counter() - start

    row["prefix_scales"] = m
    row["vmr_cached_s"] = best_time(cached_continuations, repeats)
    suffix_only()
    row["vmr_suffix_only_s"] = min(suffix_only() for _ in range(repeats))
    row["vmr_recompute_s"] = best_time(
        lambda: model.generate(input_ids.repeat_interleave(k, 0), mask.repeat_interleave(k, 0)), repeats
    )

    row["rollout_vs_teacher_forced"] = row["cached_rollout_s"] / row["teacher_forced_s"]
    row["cfg_rollout_vs_teacher_forced_2x"] = row["cached_rollout_cfg_s"] / row["teacher_forced_2x_batch_s"]
    row["recompute_vs_cached"] = row["recompute_rollout_s"] / row["cached_rollout_s"]
    row["vmr_cached_vs_k_suffix"] = row["vmr_cached_s"] / (k * row["vmr_suffix_only_s"])
    row["vmr_recompute_vs_cached"] = row["vmr_recompute_s"] / row["vmr_cached_s"]
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default="benchmarks/results/rollout.json")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    rows = [
        measure("nextflow-shaped (18 scales, halved)", nextflow_shaped_config(), args.batch_size, args.repeats),
        measure("tiny recipe (6 scales)", tiny_text_render_config(build_char_tokenizer()), 16, args.repeats),
    ]
    columns = [
        ("model", "{:36}"),
        ("tokens", "{:>6}"),
        ("batch", "{:>5}"),
        ("rollout_vs_teacher_forced", "{:>10.2f}"),
        ("cfg_rollout_vs_teacher_forced_2x", "{:>10.2f}"),
        ("recompute_vs_cached", "{:>10.2f}"),
        ("vmr_cached_vs_k_suffix", "{:>10.2f}"),
        ("vmr_recompute_vs_cached", "{:>10.2f}"),
    ]
    print(
        "rollout/TF = cached rollout / one teacher-forced pass (target <= 1.5); cfg: same with guidance vs a 2x "
        "batch pass;\nrecompute = no-cache rollout / cached (target >= 2.5 on 18 scales); vmr/Ksuf = prefix + K "
        "continuations / (K x suffix-only) (target <= 1.15);\nvmr recompute = K full rollouts / cached "
        "continuations"
    )
    header = ["model", "tokens", "batch", "rollout/TF", "cfg", "recompute", "vmr/Ksuf", "vmr recompute"]
    print(f"{header[0]:36} {header[1]:>6} {header[2]:>5} " + " ".join(f"{h:>10}" for h in header[3:]))
    for row in rows:
        print(" ".join(fmt.format(row[key]) for key, fmt in columns))
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(
            {
                "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                f"torch {torch.__version__}",
                "rows": rows,
            },
            f,
            indent=2,
        )


if __name__ == "__main__":
    main()
