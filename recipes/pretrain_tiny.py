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
nats per token: how much the model uses its prompt, the early go/no-go signal of a run).

Every `--eval_every` steps the transformer stage also samples the 100 held-out prompts (words never rendered for
training), logs Tesseract's word accuracy and saves a loadable snapshot (`output_dir/var/snapshots/step-N`): pick the
snapshot whose accuracy suits you. The model shipped in recipes/models/var-tiny-text-render is the step-1200 snapshot
(held-out word accuracy 0.31) of a run made with these settings but resumed twice with longer --var_steps (so its
learning-rate schedule differs from one default run); its README has the exact commands and logs (~30 min on 2
cores in all: tokenizer 15 min, encoding the renders 3.5 min, transformer ~0.5 s/step).
"""

import argparse
import hashlib
import json
import math
import os
import random

import numpy as np
import torch
from tqdm.auto import tqdm

import trl_var
from trl_var import MultiScaleVQModel, VARForImageGeneration, VARPipeline
from trl_var.data import HELDOUT_WORDS, make_heldout_dataset
from trl_var.data.render import RenderStyle, make_render_dataset, render_word
from trl_var.evaluation import read_images, score_prompts
from trl_var.models.pipeline import images_to_pil
from trl_var.models.presets import tiny_text_render_model


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
    return sum(read.upper() == word for read, word in zip(read_images(images), words)) / len(words)


def tokenizer_quality(vq: MultiScaleVQModel, num_images: int = 128, seed: int = 12345) -> dict:
    """
    The tokenizer's quality gate: Tesseract's word accuracy on reconstructions of renders of the held-out words (never
    in the training renders) against its accuracy on the renders themselves (the gate: a ratio of at least 0.85).
    """
    rng = random.Random(seed)
    words = [HELDOUT_WORDS[i % len(HELDOUT_WORDS)] for i in range(num_images)]
    renders = [render_word(word, RenderStyle(), rng) for word in words]
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


def fingerprint(module: torch.nn.Module) -> str:
    """A short hash of a module's weights: what an encoding cache must match."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def encoded_renders(args, vq: MultiScaleVQModel, folder: str) -> dict:
    """
    The transformer's training set: `--num_images` renders of training words (never a held-out one), encoded once by
    the frozen tokenizer and cached in `folder/renders.pt` (the tokenizer is the costly part of a step otherwise).
    """
    path = os.path.join(folder, "renders.pt")
    key = {"num_images": args.num_images, "word_length": args.word_length, "tokenizer": fingerprint(vq)}
    if os.path.exists(path):
        cache = torch.load(path)
        if cache.get("key") == key:
            return cache
        print(f"{path} was encoded with {cache.get('key')}, not {key}: encoding the renders again.")
    prompts, ids = [], []
    chunk = 256
    for start in tqdm(range(0, args.num_images, chunk), desc="encoding renders"):
        data = make_render_dataset(
            min(chunk, args.num_images - start), word_length=args.word_length, seed=2 * 1_000_003 + start
        )
        with torch.no_grad():
            grids = vq.encode(to_tensor(list(data["image"])))
        ids.append(torch.cat([g.flatten(1) for g in grids], 1).to(torch.int16))
        prompts += list(data["prompt"])
    cache = {"prompts": prompts, "image_ids": torch.cat(ids), "key": key}
    os.makedirs(folder, exist_ok=True)
    torch.save(cache, path + ".tmp")
    os.replace(path + ".tmp", path)
    return cache


def learning_rate(args, step: int) -> float:
    """Linear warm-up over `--var_warmup` steps, then cosine decay to a tenth of `--var_lr` at `--var_steps`."""
    if step < args.var_warmup:
        return args.var_lr * (step + 1) / args.var_warmup
    progress = (step - args.var_warmup) / max(1, args.var_steps - args.var_warmup)
    return args.var_lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def heldout_accuracy(args, model, tokenizer) -> dict:
    """Tesseract's word accuracy and NED on the held-out prompts, sampled as the RL recipe evaluates."""
    heldout = make_heldout_dataset()
    scores = score_prompts(
        VARPipeline(model, tokenizer),
        list(heldout["prompt"]),
        list(heldout["text"]),
        guidance_scale=args.eval_guidance_scale,
        top_k=args.eval_top_k,
        top_p=args.eval_top_p,
        seed=args.seed,
    )
    return {"heldout_word_accuracy": round(scores["word_accuracy"], 4), "heldout_ned": round(scores["ned"], 4)}


def train_var(args, model: VARForImageGeneration, tokenizer) -> VARForImageGeneration:
    folder = os.path.join(args.output_dir, "var")
    data = encoded_renders(args, model.vqmodel, folder)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.var_lr, betas=(0.9, 0.95), weight_decay=0.05)
    start = load_state(folder, model, optimizer)
    gap_prompts, gap_ids = data["prompts"][:64], data["image_ids"][:64].long()
    model.train()
    model.vqmodel.eval()  # frozen: no code-usage counting, no dropout
    progress = tqdm(range(start, args.var_steps), initial=start, total=args.var_steps, desc="transformer")
    for step in progress:
        generator = torch.Generator().manual_seed(args.seed * 1_000_003 + step)  # a resumed run draws the same
        rows = torch.randint(len(data["prompts"]), (args.var_batch_size,), generator=generator)
        dropped = torch.rand(args.var_batch_size, generator=generator) < args.prompt_dropout
        text = tokenizer(
            [data["prompts"][i] for i in rows], padding=True, return_tensors="pt", add_special_tokens=False
        )
        mask = text["attention_mask"].masked_fill(dropped[:, None], 0)  # the empty prompt of guidance's branch
        logprobs, _ = model.image_token_logprobs(text["input_ids"], data["image_ids"][rows].long(), mask)
        loss = -logprobs.mean()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(args, step)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        log = {"ce": round(loss.item(), 4)}
        if (step + 1) % args.save_every == 0 or step + 1 == args.var_steps:
            model.eval()
            log["prompt_gap"] = round(prompt_gap(model, tokenizer, gap_prompts, gap_ids), 4)
            if args.eval_every and ((step + 1) % args.eval_every == 0 or step + 1 == args.var_steps):
                log.update(heldout_accuracy(args, model, tokenizer))
                snapshot = os.path.join(folder, "snapshots", f"step-{step + 1}")  # a loadable model per evaluation
                model.save_pretrained(snapshot)
                tokenizer.save_pretrained(snapshot)
            model.train()
            model.vqmodel.eval()
            save_state(folder, model, optimizer, step + 1, log)
            progress.write(json.dumps({"step": step + 1, **log}))
        progress.set_postfix(log)
    return model.eval()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/pretrain-tiny")
    parser.add_argument("--stage", choices=["all", "tokenizer", "var"], default="all")
    parser.add_argument("--batch_size", type=int, default=32, help="Tokenizer batch size.")
    parser.add_argument("--word_length", type=int, default=3)
    parser.add_argument("--tokenizer_steps", type=int, default=900)
    parser.add_argument("--tokenizer_lr", type=float, default=3e-4)
    parser.add_argument("--restart_every", type=int, default=100, help="Dead-code restarts every N tokenizer steps.")
    parser.add_argument("--var_steps", type=int, default=1600)
    parser.add_argument("--var_lr", type=float, default=1e-3, help="Peak learning rate of the transformer.")
    parser.add_argument("--var_warmup", type=int, default=100)
    parser.add_argument("--var_batch_size", type=int, default=32)
    parser.add_argument("--num_images", type=int, default=40_000, help="Renders encoded once for the transformer.")
    parser.add_argument("--hidden_size", type=int, default=128, help="Transformer width (the tiny recipe's: 128).")
    parser.add_argument("--num_layers", type=int, default=4, help="Transformer depth (the tiny recipe's: 4).")
    parser.add_argument(
        "--eval_every",
        type=int,
        default=100,
        help="Every N steps (a multiple of --save_every): held-out word accuracy, and a loadable model snapshot in "
        "output_dir/var/snapshots/step-N (0: never).",
    )
    parser.add_argument("--eval_guidance_scale", type=float, default=3.0)
    parser.add_argument("--eval_top_k", type=int, default=2)
    parser.add_argument("--eval_top_p", type=float, default=0.9)
    parser.add_argument("--prompt_dropout", type=float, default=0.1, help="Share of empty prompts (for guidance).")
    parser.add_argument("--save_every", type=int, default=100)
    parser.add_argument("--quality_images", type=int, default=128, help="Renders read for the tokenizer's gate.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.eval_every and args.eval_every % args.save_every:
        parser.error(
            f"--eval_every ({args.eval_every}) must be a multiple of --save_every ({args.save_every}): snapshots and "
            "held-out evaluations happen at save steps."
        )
    torch.manual_seed(args.seed)

    tokenizer = trl_var.build_char_tokenizer()
    # its `vqmodel` has the tokenizer's architecture
    model = tiny_text_render_model(tokenizer, hidden_size=args.hidden_size, num_layers=args.num_layers)
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
