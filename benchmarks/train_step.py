"""
One training step of VARGRPOTrainer split into its parts: rollout (sampling + decoding), reward, the teacher-forced
log-prob pass, and the loss pass (forward + backward); achieved FLOP/s of the passes against this machine's measured
fp32 matmul peak (FLOPs counted by torch's FlopCounterMode); peak memory. CPU, fp32, one process.

    python benchmarks/train_step.py [--json benchmarks/results/train_step.json]
"""

import argparse
import json
import os
import resource
import tempfile
import time

import numpy as np
import torch
from datasets import Dataset
from torch.utils.flop_counter import FlopCounterMode

from trl_var import VARForImageGeneration, VARGRPOConfig, VARGRPOTrainer, build_char_tokenizer
from trl_var.models.presets import nextflow_shaped_config


def brightness(completions, **kwargs):
    return [float(np.asarray(image).mean() / 255) for image in completions]


def matmul_peak(size=2048, repeats=5) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def counted(fn):
    with FlopCounterMode(display=False) as counter:
        out = fn()
    return out, counter.get_total_flops()


ROUNDS = (("suffix / plain round", 3), ("prefix round (K=2)", 0))  # global steps 3 and 0 of the 3:1 cycle


def measure_round(trainer, batch, stage: str, step: int, peak: float) -> dict:
    model = trainer.model
    trainer.state.global_step = step
    trainer._round.stage = trainer._current_stage()  # the stage `_generate` samples
    (_, _, _, completions, *_), rollout_s = timed(lambda: trainer._generate([row["prompt"] for row in batch]))
    images = [im for c in completions for im in (c if isinstance(c, list) else [c])]
    _, reward_s = timed(lambda: brightness(images))
    inputs = trainer._generate_and_score_completions(batch)
    input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    attention = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    keep = inputs["completion_ids"].shape[1]

    def logprob_pass():
        with torch.no_grad():
            trainer._get_per_token_logps_and_entropies(model, input_ids, attention, keep)

    def loss_pass():
        trainer._compute_loss(model, inputs).backward()

    _, logp_flops = counted(logprob_pass)
    _, logp_s = timed(logprob_pass)
    _, loss_flops = counted(loss_pass)
    model.zero_grad()
    _, loss_s = timed(loss_pass)
    model.zero_grad()
    return {
        "round": stage,
        "images_scored": len(images),
        "trained_tokens_per_row": keep,
        "rollout_s": rollout_s,
        "reward_s": reward_s,
        "logprob_pass_s": logp_s,
        "loss_pass_s": loss_s,
        "logprob_gflops": logp_flops / 1e9,
        "loss_gflops": loss_flops / 1e9,
        "logprob_fraction_of_peak": logp_flops / logp_s / peak,
        "loss_fraction_of_peak": loss_flops / loss_s / peak,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default="benchmarks/results/train_step.json")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--num_generations", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(0)
    tokenizer = build_char_tokenizer()
    config = nextflow_shaped_config()
    config.text_config.vocab_size = len(tokenizer)
    model = VARForImageGeneration(config)
    training_args = VARGRPOConfig(
        output_dir=tempfile.mkdtemp(),
        num_generations=args.num_generations,
        per_device_train_batch_size=args.batch_size,
        report_to="none",
        guidance_scale=5.0,
        top_k=2,
        top_p=0.9,
        gradient_checkpointing=False,
        log_completions=False,
        mask_propagation=False,
        disable_tqdm=True,
    )
    dataset = Dataset.from_dict({"prompt": [f'a sign that says "W{i}"' for i in range(64)]})
    trainer = VARGRPOTrainer(model, brightness, args=training_args, train_dataset=dataset, processing_class=tokenizer)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    batch = [
        {"prompt": p}
        for p in dataset["prompt"][: args.batch_size // args.num_generations]
        for _ in range(args.num_generations)
    ]
    peak = matmul_peak()
    rows = [measure_round(trainer, batch, stage, step, peak) for stage, step in ROUNDS]
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(
        f"fp32 matmul peak (2048^3): {peak / 1e9:.0f} GFLOP/s; peak RSS {rss_gb:.2f} GB; batch {args.batch_size}, "
        f"{model.num_image_tokens} tokens/image, guidance 5"
    )
    print(f"{'round':22} {'rollout':>8} {'reward':>7} {'logprob':>8} {'loss f+b':>9} {'logp %pk':>9} {'loss %pk':>9}")
    for r in rows:
        print(
            f"{r['round']:22} {r['rollout_s']:>8.2f} {r['reward_s']:>7.2f} {r['logprob_pass_s']:>8.2f} "
            f"{r['loss_pass_s']:>9.2f} {100 * r['logprob_fraction_of_peak']:>8.0f}% {100 * r['loss_fraction_of_peak']:>8.0f}%"
        )
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"matmul_peak_gflops": peak / 1e9, "peak_rss_gb": rss_gb, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
