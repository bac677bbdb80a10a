"""
GRPO on text rendering: a VAR text-to-image model learns to draw the quoted words of its prompts, rewarded by OCR.

    accelerate launch recipes/train_text_render.py                       # the CPU demo (recipes/configs/text_render_tiny.yaml)
    accelerate launch recipes/train_text_render.py --max_steps 20        # the demo's config, one value overridden
    accelerate launch recipes/train_text_render.py --config my.yaml      # any VARGRPOConfig field, plus the ones below
    accelerate launch recipes/train_text_render.py --help                # every option

With no arguments it fine-tunes the tiny pretrained model shipped in `recipes/models/var-tiny-text-render` (made by
`recipes/pretrain_tiny.py`) on synthetic prompts on a CPU, prints Tesseract's word accuracy on the held-out prompts
(words never seen in pretraining nor in RL) before and after training, saves the model to `output_dir` (loadable with
`AutoModel.from_pretrained` after `import trl_var`) and writes `before_after.png`: samples of the same held-out
prompts before and after training, with what Tesseract read. An interrupted run resumes from the last checkpoint in
`output_dir` when started again.
"""

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass, field

from datasets import load_dataset
from transformers import AutoModel, AutoTokenizer, set_seed
from transformers.trainer_utils import get_last_checkpoint
from trl import TrlParser

from trl_var import VARGRPOConfig, VARGRPOTrainer, VARPipeline
from trl_var.data import extract_quoted_spans, make_heldout_dataset, make_text_render_dataset
from trl_var.evaluation import score_prompts
from trl_var.rewards import OCRReward
from trl_var.visualization import make_image_grid


logger = logging.getLogger(__name__)

RECIPES = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIG = os.path.join(RECIPES, "configs", "text_render_tiny.yaml")
# The tiny pretrained model shipped with the repo: a folder that `from_pretrained` loads like a Hub id.
SHIPPED_MODEL = os.path.join(RECIPES, "models", "var-tiny-text-render")


@dataclass
class ScriptArguments:
    """Arguments of the recipe besides [`VARGRPOConfig`]."""

    model_name_or_path: str = field(
        default=SHIPPED_MODEL,
        metadata={
            "help": "Folder or Hub id of a trl_var model (with its tokenizer). Default: the tiny pretrained model "
            "shipped in recipes/models/var-tiny-text-render (64x64 images of 3-letter words)."
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
    num_heldout_prompts: int = field(
        default=0,
        metadata={
            "help": "Toy task only: held-out prompts (trl_var.data.HELDOUT_WORDS, never trained on) whose word "
            "accuracy is printed before and after training, sampled with the eval_* settings (the CPU demo: 100). "
            "0: score the first num_sample_prompts training prompts instead."
        },
    )


def heldout_scores(model, tokenizer, prompts, targets, args: VARGRPOConfig) -> dict:
    """Word accuracy and NED of one sample per held-out prompt, with the evaluation sampling settings."""
    pipeline = VARPipeline(model, tokenizer)
    return score_prompts(pipeline, prompts, targets, seed=args.seed, **args.sampling_kwargs(evaluation=True))


def main(script_args: ScriptArguments, training_args: VARGRPOConfig):
    set_seed(training_args.seed)
    reward = OCRReward(target_column=script_args.reward_target_column, penalty=script_args.ocr_penalty)
    tokenizer = AutoTokenizer.from_pretrained(script_args.model_name_or_path, padding_side="left")
    model = AutoModel.from_pretrained(script_args.model_name_or_path, **(training_args.model_init_kwargs or {}))

    if script_args.dataset_name is None:  # synthetic prompts; the held-out words are never drawn
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
    if script_args.num_heldout_prompts > 0:
        heldout = make_heldout_dataset()
        num_scored = max(script_args.num_heldout_prompts, script_args.num_sample_prompts)
        prompts, label = heldout["prompt"][:num_scored], "Held-out"
    else:  # the dataset's own first prompts, scored against their quoted texts
        prompts, label = dataset["prompt"][: script_args.num_sample_prompts], "Sample-prompt"
    targets = [extract_quoted_spans(prompt) for prompt in prompts]
    main_process = trainer.accelerator.is_main_process
    if main_process:
        before = heldout_scores(model.eval(), tokenizer, prompts, targets, training_args)

    checkpoint = training_args.resume_from_checkpoint
    if checkpoint is None and os.path.isdir(training_args.output_dir):
        checkpoint = get_last_checkpoint(training_args.output_dir)
        if checkpoint is not None:
            logger.warning(f"Resuming from {checkpoint} (the last checkpoint in {training_args.output_dir}).")
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(training_args.output_dir)

    if main_process:
        model = trainer.accelerator.unwrap_model(trainer.model).eval()
        after = heldout_scores(model, tokenizer, prompts, targets, training_args)
        shown = script_args.num_sample_prompts
        captions = [
            f"{label}: read {read or '-'!r} ({prompt})"
            for label, scores in (("before", before), ("after", after))
            for prompt, read in zip(prompts[:shown], scores["predictions"][:shown], strict=True)
        ]
        grid = make_image_grid(before["images"][:shown] + after["images"][:shown], captions, columns=shown)
        path = os.path.join(training_args.output_dir, "before_after.png")
        grid.save(path)
        results = {
            "prompts": label.lower(),
            "num_prompts": len(prompts),
            "before": {k: before[k] for k in ("word_accuracy", "ned")},
            "after": {k: after[k] for k in ("word_accuracy", "ned")},
        }
        with open(os.path.join(training_args.output_dir, "before_after.json"), "w") as f:
            json.dump(results, f, indent=2)
        print(
            f"{label} word accuracy ({len(prompts)} prompts): {before['word_accuracy']:.3f} before, "
            f"{after['word_accuracy']:.3f} after training (NED {before['ned']:.3f} -> {after['ned']:.3f}). "
            f"Model saved to {training_args.output_dir}; samples in {path}."
        )
    if training_args.push_to_hub:
        # `trainer.save_model` pushed the model already (transformers does when `push_to_hub` is set); this push adds
        # the dataset to the model card and before_after.png. A failed push says where the model is saved.
        trainer.push_to_hub(dataset_name=script_args.dataset_name)


if __name__ == "__main__":
    if not {"--config", "--model_name_or_path", "--dataset_name"} & set(sys.argv[1:]):
        # the CPU demo's YAML is the default config of a demo run; options given on the command line override it
        sys.argv[1:1] = ["--config", DEFAULT_CONFIG]
    parser = TrlParser(
        (ScriptArguments, VARGRPOConfig), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    script_args, training_args = parser.parse_args_and_config()
    main(script_args, training_args)
