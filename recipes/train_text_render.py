"""
GRPO on text rendering: a VAR text-to-image model learns to draw the quoted words of its prompts, rewarded by OCR.

    accelerate launch recipes/train_text_render.py                       # the CPU demo (recipes/configs/text_render_tiny.yaml)
    accelerate launch recipes/train_text_render.py --config my.yaml      # any VARGRPOConfig field, plus the ones below
    accelerate launch recipes/train_text_render.py --help                # every option

With no arguments it trains a tiny randomly initialized model on synthetic prompts on a CPU in a few minutes, saves it
to `output_dir` (loadable with `AutoModel.from_pretrained` after `import trl_var`) and writes `before_after.png`:
sample images of the same prompts before and after training, with their OCR rewards. An interrupted run resumes from
the last checkpoint in `output_dir` when started again.
"""

import argparse
import logging
import os
import sys
from dataclasses import dataclass, field

import torch
from datasets import load_dataset
from transformers import AutoModel, AutoTokenizer, set_seed
from transformers.trainer_utils import get_last_checkpoint
from trl import TrlParser

import trl_var
from trl_var import VARConfig, VARForImageGeneration, VARGRPOConfig, VARGRPOTrainer, VARPipeline
from trl_var.data import make_text_render_dataset
from trl_var.rewards import OCRReward
from trl_var.visualization import make_image_grid


logger = logging.getLogger(__name__)

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "text_render_tiny.yaml")


@dataclass
class ScriptArguments:
    """Arguments of the recipe besides [`VARGRPOConfig`]."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Folder or Hub id of a trl_var model (with its tokenizer). Default: a tiny randomly initialized "
            "model for the CPU demo."
        },
    )
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Dataset for `datasets.load_dataset` (Hub id, local folder, or a json/csv/parquet file) with a "
            "`prompt` column. Default: synthetic prompts asking for one quoted word each."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    num_prompts: int = field(default=256, metadata={"help": "Synthetic dataset: number of prompts."})
    word_length: int = field(default=3, metadata={"help": "Synthetic dataset: letters per word."})
    reward_target_column: str | None = field(
        default=None,
        metadata={"help": "Column with the words to render. Default: the double-quoted spans of the prompt."},
    )
    ocr_penalty: float = field(default=0.6, metadata={"help": "Weight lambda of the OCR reward's character penalty."})
    num_sample_prompts: int = field(
        default=8, metadata={"help": "Prompts shown in before_after.png (sampled before and after training)."}
    )


def tiny_text_render_model(tokenizer) -> VARForImageGeneration:
    """A 0.9M-parameter transformer (+ a 1.3M-parameter tokenizer) for 64x64 images: stride 8, scales 1,2,3,4,6,8."""
    config = VARConfig(
        text_config={
            "model_type": "qwen2",
            "hidden_size": 128,
            "intermediate_size": 384,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "vocab_size": len(tokenizer),
            "pad_token_id": tokenizer.pad_token_id,
            "max_position_embeddings": 512,
        },
        vq_config={
            "sample_size": 64,
            "block_out_channels": [32, 64, 64, 64],
            "norm_num_groups": 16,
            "latent_channels": 16,
            "codebook_size": 512,
            "scale_schedule": [[s, s] for s in (1, 2, 3, 4, 6, 8)],
        },
    )
    return VARForImageGeneration(config)


def sample_grid(model, tokenizer, prompts, reward, args: VARGRPOConfig, label: str):
    """Images for `prompts` with the rollout sampling settings, each captioned with its reward."""
    pipe = VARPipeline(model, tokenizer)
    generator = torch.Generator(device=model.device).manual_seed(args.seed)
    images = pipe(
        prompts,
        guidance_scale=args.guidance_scale,
        guidance_schedule=args.guidance_schedule,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        generator=generator,
    ).images
    scores = reward(prompts=prompts, completions=images)
    captions = [f"{label} ocr={score:.2f} {prompt}" for prompt, score in zip(prompts, scores, strict=True)]
    return images, captions, scores


def main(script_args: ScriptArguments, training_args: VARGRPOConfig):
    set_seed(training_args.seed)
    reward = OCRReward(target_column=script_args.reward_target_column, penalty=script_args.ocr_penalty)

    if script_args.model_name_or_path is None:
        tokenizer = trl_var.build_char_tokenizer()
        model = tiny_text_render_model(tokenizer)
    else:
        tokenizer = AutoTokenizer.from_pretrained(script_args.model_name_or_path, padding_side="left")
        model = AutoModel.from_pretrained(script_args.model_name_or_path, **(training_args.model_init_kwargs or {}))

    if script_args.dataset_name is None:
        dataset = make_text_render_dataset(
            script_args.num_prompts, word_length=script_args.word_length, seed=training_args.seed
        )
    else:
        dataset = load_dataset(
            script_args.dataset_name, script_args.dataset_config, split=script_args.dataset_train_split
        )

    trainer = VARGRPOTrainer(
        model=model, reward_funcs=reward, args=training_args, train_dataset=dataset, processing_class=tokenizer
    )
    sample_prompts = dataset["prompt"][: script_args.num_sample_prompts]
    if trainer.accelerator.is_main_process:
        before = sample_grid(model.eval(), tokenizer, sample_prompts, reward, training_args, "before")

    checkpoint = training_args.resume_from_checkpoint
    if checkpoint is None and os.path.isdir(training_args.output_dir):
        checkpoint = get_last_checkpoint(training_args.output_dir)
        if checkpoint is not None:
            logger.warning(f"Resuming from {checkpoint} (the last checkpoint in {training_args.output_dir}).")
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(training_args.output_dir)

    if trainer.accelerator.is_main_process:
        model = trainer.accelerator.unwrap_model(trainer.model).eval()
        after = sample_grid(model, tokenizer, sample_prompts, reward, training_args, "after")
        grid = make_image_grid(before[0] + after[0], before[1] + after[1], columns=len(sample_prompts))
        path = os.path.join(training_args.output_dir, "before_after.png")
        grid.save(path)
        mean = lambda values: sum(values) / len(values)  # noqa: E731
        print(
            f"Mean OCR reward of the sample prompts: {mean(before[2]):.3f} before, {mean(after[2]):.3f} after. "
            f"Model saved to {training_args.output_dir}; samples in {path}."
        )
    if training_args.push_to_hub:
        # `trainer.save_model` pushed the model already (transformers does when `push_to_hub` is set); this push adds
        # the dataset to the model card and before_after.png. A failed push says where the model is saved.
        trainer.push_to_hub(dataset_name=script_args.dataset_name)


if __name__ == "__main__":
    if len(sys.argv) == 1:
        sys.argv += ["--config", DEFAULT_CONFIG]
    parser = TrlParser(
        (ScriptArguments, VARGRPOConfig), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    script_args, training_args = parser.parse_args_and_config()
    main(script_args, training_args)
