"""
Pretrain the tiny text-rendering model on a CPU: first the image tokenizer (`MultiScaleVQModel`) on synthetic renders
of short words, then the VAR transformer on (prompt, token grids) pairs, teacher-forced, with 10% of the prompts
dropped so that classifier-free guidance has an unconditional branch to contrast with.

    python recipes/pretrain_tiny.py --output_dir outputs/pretrain-tiny                # both stages
    python recipes/pretrain_tiny.py --output_dir outputs/pretrain-tiny --stage var    # the transformer only
    python recipes/pretrain_tiny.py --help

Every `--save_every` steps a stage saves its weights and optimizer state; started again with the same `--output_dir`
it resumes where it stopped. The finished model is `output_dir/model`, a folder `AutoModel.from_pretrained` and
`VARPipeline.from_pretrained` load. Logged: the tokenizer's reconstruction and commitment losses and codebook usage;
the transformer's cross-entropy and its prompt gap (cross-entropy with an empty prompt minus with the true prompt,
nats per token: how much the model uses its prompt, the early go/no-go signal of NOTES.md).

Status: the pipeline of issue 4, tested on a few steps; the schedule and sizes that make the toy learnable on 2 cores
are still to be measured.
"""

import argparse
import json
import os
import random
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from tqdm.auto import tqdm

import trl_var
from trl_var import MultiScaleVQModel, VARForImageGeneration
from trl_var.data.render import RenderStyle, make_render_dataset
from trl_var.models.pipeline_var import images_to_pil
from trl_var.rewards import read_text


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_text_render import tiny_text_render_model  # noqa: E402


def to_tensor(images) -> torch.Tensor:
    """PIL images -> `(N, 3, H, W)` in [-1, 1]."""
    array = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) for image in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2) / 127.5 - 1


def batches(args, stage_seed: int, step: int):
    """The batch of `step`: rendered with a seed derived from the step, so a resumed run sees the same data."""
    data = make_render_dataset(
        args.batch_size, word_length=args.word_length, style=RenderStyle(), seed=stage_seed * 1_000_003 + step
    )
    return list(data["prompt"]), to_tensor(list(data["image"]))


def load_state(folder: str, module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    path = os.path.join(folder, "training_state.pt")
    if not os.path.exists(path):
        return 0
    state = torch.load(path, weights_only=False)
    module.load_state_dict(state["module"])
    optimizer.load_state_dict(state["optimizer"])
    print(f"Resuming {folder} at step {state['step']}")
    return state["step"]


def save_state(folder: str, module, optimizer, step: int, log: dict):
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, "training_state.pt.tmp")
    torch.save({"module": module.state_dict(), "optimizer": optimizer.state_dict(), "step": step}, tmp)
    os.replace(tmp, os.path.join(folder, "training_state.pt"))  # never a half-written checkpoint
    with open(os.path.join(folder, "log.jsonl"), "a") as f:
        f.write(json.dumps({"step": step, **log}) + "\n")


def train_tokenizer(args, vq: MultiScaleVQModel) -> MultiScaleVQModel:
    folder = os.path.join(args.output_dir, "tokenizer")
    optimizer = torch.optim.AdamW(vq.parameters(), lr=args.tokenizer_lr, betas=(0.9, 0.95))
    start = load_state(folder, vq, optimizer)
    vq.train()
    progress = tqdm(range(start, args.tokenizer_steps), initial=start, total=args.tokenizer_steps, desc="tokenizer")
    for step in progress:
        _, images = batches(args, 1, step)
        losses = vq.compute_loss(images)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        if (step + 1) % args.restart_every == 0:
            with torch.no_grad():
                features = vq.encode_latents(images)
            vq.quantizer.restart_dead_codes(features.permute(0, 2, 3, 1).reshape(-1, features.shape[1]))
        log = {k: round(v.item(), 4) for k, v in losses.items()}
        progress.set_postfix(log)
        if (step + 1) % args.save_every == 0 or step + 1 == args.tokenizer_steps:
            save_state(folder, vq, optimizer, step + 1, log)
    return vq.eval().requires_grad_(False)


def read_accuracy(images, words) -> float:
    """Share of images whose Tesseract read is exactly their word (case-insensitive)."""
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        reads = list(pool.map(read_text, images))
    return sum(" ".join(w.text for w in read).upper() == word for read, word in zip(reads, words)) / len(words)


def tokenizer_quality(vq: MultiScaleVQModel, num_images: int = 128, seed: int = 12345) -> dict:
    """
    The tokenizer's quality gate: Tesseract's word accuracy on reconstructions of fresh renders against its accuracy
    on the renders themselves (the gate: a ratio of at least 0.85).
    """
    data = make_render_dataset(num_images, style=RenderStyle(), seed=seed)
    words, renders = list(data["text"]), list(data["image"])
    with torch.no_grad():
        reconstructions = images_to_pil(vq.decode(vq.encode(to_tensor(renders))))
    on_renders, on_reconstructions = read_accuracy(renders, words), read_accuracy(reconstructions, words)
    return {
        "renders": on_renders,
        "reconstructions": on_reconstructions,
        "ratio": on_reconstructions / max(on_renders, 1e-9),
        "codes_used": int(torch.cat([g.flatten() for g in vq.encode(to_tensor(renders))]).unique().numel()),
    }


def prompt_gap(model, tokenizer, prompts, image_ids) -> float:
    """Cross-entropy per image token with an empty prompt minus with the true prompt (nats)."""
    text = tokenizer(prompts, padding=True, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        true, _ = model.image_token_logprobs(text["input_ids"], image_ids, text["attention_mask"])
        null, _ = model.image_token_logprobs(text["input_ids"], image_ids, torch.zeros_like(text["attention_mask"]))
    return (true.mean() - null.mean()).item()


def train_var(args, model: VARForImageGeneration, tokenizer) -> VARForImageGeneration:
    folder = os.path.join(args.output_dir, "var")
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.var_lr, betas=(0.9, 0.95), weight_decay=0.05)
    start = load_state(folder, model, optimizer)
    eval_prompts, eval_images = batches(args, 3, 0)
    eval_ids = torch.cat([g.flatten(1) for g in model.vqmodel.encode(eval_images)], 1)
    rng = random.Random(start)
    model.train()
    model.vqmodel.eval()  # frozen: no code-usage counting, no dropout
    progress = tqdm(range(start, args.var_steps), initial=start, total=args.var_steps, desc="transformer")
    for step in progress:
        prompts, images = batches(args, 2, step)
        image_ids = torch.cat([g.flatten(1) for g in model.vqmodel.encode(images)], 1)
        text = tokenizer(prompts, padding=True, return_tensors="pt", add_special_tokens=False)
        dropped = torch.tensor([rng.random() < args.prompt_dropout for _ in prompts])
        mask = text["attention_mask"].masked_fill(dropped[:, None], 0)  # the empty prompt of guidance's branch
        logprobs, _ = model.image_token_logprobs(text["input_ids"], image_ids, mask)
        loss = -logprobs.mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        log = {"ce": round(loss.item(), 4)}
        if (step + 1) % args.save_every == 0 or step + 1 == args.var_steps:
            model.eval()
            log["prompt_gap"] = round(prompt_gap(model, tokenizer, eval_prompts, eval_ids), 4)
            model.train()
            model.vqmodel.eval()
            save_state(folder, model, optimizer, step + 1, log)
        progress.set_postfix(log)
    return model.eval()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/pretrain-tiny")
    parser.add_argument("--stage", choices=["all", "tokenizer", "var"], default="all")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--word_length", type=int, default=3)
    parser.add_argument("--tokenizer_steps", type=int, default=2000)
    parser.add_argument("--tokenizer_lr", type=float, default=3e-4)
    parser.add_argument("--restart_every", type=int, default=100, help="Dead-code restarts every N tokenizer steps.")
    parser.add_argument("--var_steps", type=int, default=4000)
    parser.add_argument("--var_lr", type=float, default=3e-4)
    parser.add_argument("--prompt_dropout", type=float, default=0.1, help="Share of empty prompts (for guidance).")
    parser.add_argument("--save_every", type=int, default=200)
    parser.add_argument("--quality_images", type=int, default=128, help="Renders read for the tokenizer's gate.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    tokenizer = trl_var.build_char_tokenizer()
    model = tiny_text_render_model(tokenizer)  # its `vqmodel` has the tokenizer's architecture
    vq = MultiScaleVQModel(**model.config.vq_config)
    if args.stage in ("all", "tokenizer"):
        vq = train_tokenizer(args, vq)
        vq.save_pretrained(os.path.join(args.output_dir, "tokenizer", "final"))
        quality = tokenizer_quality(vq, args.quality_images)
        with open(os.path.join(args.output_dir, "tokenizer", "quality.json"), "w") as f:
            json.dump(quality, f, indent=2)
        print(f"Tokenizer quality gate (Tesseract word accuracy): {quality}")
    else:
        vq = MultiScaleVQModel.from_pretrained(os.path.join(args.output_dir, "tokenizer", "final"))
    model.vqmodel.load_state_dict(vq.state_dict())
    if args.stage in ("all", "var"):
        model = train_var(args, model, tokenizer)
        final = os.path.join(args.output_dir, "model")
        model.save_pretrained(final)
        tokenizer.save_pretrained(final)
        print(f"Saved the pretrained model to {final}")


if __name__ == "__main__":
    main()
