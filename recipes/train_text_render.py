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
prompts before and after training, with what Tesseract read. An interrupted run resumes from the last complete
checkpoint in `output_dir` when started again; a run with other settings into the same `output_dir`, or a second
training into it while one is running, is refused (`VARGRPOTrainer.train`, trl_var/trainer/run_folder.py).
"""

import argparse
import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Literal

from transformers import set_seed
from transformers.trainer_utils import get_last_checkpoint
from trl import TrlParser
from trl.models.utils import unwrap_model_for_generation

from trl_var import VARGRPOConfig, VARGRPOTrainer, VARPipeline
from trl_var.data import extract_quoted_spans, make_heldout_dataset, make_text_render_dataset
from trl_var.data.loading import load_dataset_from
from trl_var.evaluation import score_prompts
from trl_var.rewards import OCRReward
from trl_var.trainer.preflight import (
    check_enough_prompts,
    check_prefix_scales,
    create_hub_repository,
    load_policy,
    warn_unknown_characters,
)
from trl_var.trainer.run_folder import check_run_settings, lock_output_dir, training_settings
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
    ocr_backend: Literal["tesseract", "ppocr"] = field(
        default="tesseract",
        metadata={
            "help": "OCR engine of the reward and of the before/after scoring: tesseract, or ppocr (PP-OCRv6-small via "
            'RapidOCR, the paper\'s OCR family; pip install "trl-var[ppocr]").'
        },
    )
    ocr_timeout: float = field(
        default=30,
        metadata={
            "help": "Seconds the OCR engine (Tesseract or PP-OCR) may take on one image (0: no limit); an image not read in time scores None in "
            "training (left out of the reward) and counts as read empty in the before/after scoring, with a warning."
        },
    )
    num_sample_prompts: int = field(
        default=8,
        metadata={
            "help": "Prompts shown in before_after.png (sampled before and after training). 0, with "
            "num_heldout_prompts 0: no before/after scoring."
        },
    )
    num_heldout_prompts: int = field(
        default=0,
        metadata={
            "help": "Toy task only: held-out prompts (trl_var.data.HELDOUT_WORDS, never trained on) whose word "
            "accuracy is printed before and after training, sampled with the eval_* settings (the CPU demo: 100). "
            "0: score the first num_sample_prompts training prompts instead."
        },
    )


def heldout_scores(model, tokenizer, prompts, targets, args: VARGRPOConfig, script_args: ScriptArguments) -> dict:
    """Word accuracy and NED of one sample per held-out prompt, with the evaluation sampling settings."""
    pipeline = VARPipeline(model, tokenizer)
    return score_prompts(
        pipeline,
        prompts,
        targets,
        seed=args.seed,
        ocr_timeout=script_args.ocr_timeout,
        ocr_backend=script_args.ocr_backend,
        **args.sampling_kwargs(evaluation=True),
    )


# Script arguments that only choose what is reported: a resumed run may change them.
REPORT_ONLY_ARGUMENTS = ("num_sample_prompts", "num_heldout_prompts", "ocr_timeout")


def script_settings(script_args: ScriptArguments) -> dict:
    """The script arguments a resumed run must keep, local paths resolved (a relative and an absolute path agree)."""
    settings = {k: v for k, v in asdict(script_args).items() if k not in REPORT_ONLY_ARGUMENTS}
    for name in ("model_name_or_path", "dataset_name"):
        if settings[name] is not None and os.path.exists(settings[name]):
            settings[name] = os.path.realpath(settings[name])
    return settings


def reward_targets(reward: OCRReward, dataset) -> list[list[str]]:
    """
    The words the reward scores each row of `dataset` against, found before anything is sampled: the reward's own
    error names a prompt without quoted text or a missing `--reward_target_column`, and a row whose column is empty
    is named here.
    """
    columns = {name: dataset[name] for name in dataset.column_names if name != "prompt"}
    targets = reward.targets(dataset["prompt"], **columns)
    for row, (prompt, words) in enumerate(zip(dataset["prompt"], targets, strict=True)):
        if not words:
            raise ValueError(
                f"Row {row} ({prompt!r}) has no text to render in the column {reward.target_column!r}: fill it or "
                f"drop the row."
            )
    return targets


def main(script_args: ScriptArguments, training_args: VARGRPOConfig):
    set_seed(training_args.seed)
    output_dir = training_args.output_dir
    check_prefix_scales(script_args.model_name_or_path, training_args.vmr_prefix_scales)  # before anything is written
    if training_args.should_save:
        # `VARGRPOTrainer.train` locks the folder and checks the training settings; done here too, it fails before the
        # model loads, and records the script's own settings
        lock_output_dir(output_dir)
        check_run_settings(
            output_dir, {"training": training_settings(training_args), "script": script_settings(script_args)}
        )
    if training_args.push_to_hub:  # fail now, not when the trainer is built after the model loads
        create_hub_repository(training_args)
    reward = OCRReward(
        target_column=script_args.reward_target_column,
        penalty=script_args.ocr_penalty,
        timeout=script_args.ocr_timeout,
        backend=script_args.ocr_backend,
    )

    if script_args.dataset_name is None:  # synthetic prompts; the held-out words are never drawn
        dataset = make_text_render_dataset(
            script_args.num_prompts, word_length=script_args.word_length, seed=training_args.seed
        )
    else:
        dataset = load_dataset_from(
            script_args.dataset_name, script_args.dataset_config, split=script_args.dataset_train_split
        )
    check_enough_prompts(len(dataset), training_args)
    targets_of_dataset = reward_targets(reward, dataset)
    model, tokenizer = load_policy(script_args.model_name_or_path, **(training_args.model_init_kwargs or {}))
    warn_unknown_characters(tokenizer, dataset["prompt"])

    trainer = VARGRPOTrainer(
        model=model, reward_funcs=reward, args=training_args, train_dataset=dataset, processing_class=tokenizer
    )
    if script_args.num_heldout_prompts > 0:
        heldout = make_heldout_dataset()
        num_scored = max(script_args.num_heldout_prompts, script_args.num_sample_prompts)
        prompts, label = heldout["prompt"][:num_scored], "Held-out"
        targets = [extract_quoted_spans(prompt) for prompt in prompts]
    else:  # the dataset's own first prompts, scored against the reward's targets
        prompts, label = dataset["prompt"][: script_args.num_sample_prompts], "Sample-prompt"
        targets = targets_of_dataset[: len(prompts)]
    main_process = trainer.accelerator.is_main_process
    if main_process and prompts:
        before = heldout_scores(model.eval(), tokenizer, prompts, targets, training_args, script_args)

    # a rerun resumes; the trainer takes the last complete checkpoint, skipping one a kill left half-written
    has_checkpoint = os.path.isdir(output_dir) and get_last_checkpoint(output_dir) is not None
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint or has_checkpoint)

    if prompts:  # the report is written before `save_model` pushes, so a failed push keeps it
        # every process samples: a sharded model (FSDP, ZeRO-3) gathers its parameters collectively, as in rollouts
        with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator) as trained:
            after = heldout_scores(trained.eval(), tokenizer, prompts, targets, training_args, script_args)
        if main_process:
            write_report(label, prompts, before, after, script_args.num_sample_prompts, output_dir)
    trainer.save_model(output_dir)
    if main_process:
        print(f"Model saved to {output_dir}.")
    if training_args.push_to_hub:
        # `trainer.save_model` pushed the model already (transformers does when `push_to_hub` is set); this push adds
        # the dataset to the model card and before_after.png. A failed push says where the model is saved.
        trainer.push_to_hub(dataset_name=script_args.dataset_name)


def write_report(label: str, prompts: list[str], before: dict, after: dict, shown: int, output_dir: str) -> None:
    """
    Writes before_after.json (and before_after.png, with `shown` prompts) and prints the before/after scores, with how
    many images OCR did not read (timed out or failed): those count as read empty, and a score of images none of which
    was read is printed as not measured rather than as a 0.
    """
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, "before_after.png")
    if shown > 0:
        captions = [
            f"{when}: read {read or '-'!r} ({prompt})"
            for when, scores in (("before", before), ("after", after))
            for prompt, read in zip(prompts[:shown], scores["predictions"][:shown], strict=True)
        ]
        grid = make_image_grid(before["images"][:shown] + after["images"][:shown], captions, columns=shown)
        grid.save(path)
    fields = ("word_accuracy", "ned", "num_unread")
    results = {
        "prompts": label.lower(),
        "num_prompts": len(prompts),
        "before": {k: before[k] for k in fields},
        "after": {k: after[k] for k in fields},
    }
    with open(os.path.join(output_dir, "before_after.json"), "w") as f:
        json.dump(results, f, indent=2)

    def score(scores: dict, name: str) -> str:
        return "not measured" if scores["num_unread"] == len(prompts) else f"{scores[name]:.3f}"

    unread = ""
    if before["num_unread"] or after["num_unread"]:
        unread = (
            f" OCR did not read {before['num_unread']} of {len(prompts)} images before and {after['num_unread']} "
            f"after training (timed out or failed, see the warnings; counted as read empty)."
        )
    print(
        f"{label} word accuracy ({len(prompts)} prompts): {score(before, 'word_accuracy')} before, "
        f"{score(after, 'word_accuracy')} after training (NED {score(before, 'ned')} -> {score(after, 'ned')})."
        + unread
        + (f" Samples in {path}." if shown > 0 else "")
    )


def config_in_use(argv: list[str]) -> tuple[list[str], str]:
    """
    The command line with the demo's YAML added for a demo run (no `--config`, `--model_name_or_path` or
    `--dataset_name`: options given override it), and a line saying which config the run uses: a run on another model
    or dataset starts from VARGRPOConfig's defaults, not from the demo's settings tuned for the tiny model.
    """
    options = {arg.split("=")[0] for arg in argv}
    if "--config" in options:
        return argv, "Config: the --config file, then the command line's options."
    if not {"--model_name_or_path", "--dataset_name"} & options:
        return ["--config", DEFAULT_CONFIG, *argv], f"Config: the CPU demo's {DEFAULT_CONFIG}, then the command line."
    return argv, (
        f"Config: VARGRPOConfig's defaults and the command line (a run on another model or dataset does not read the "
        f"demo's {DEFAULT_CONFIG}; pass `--config {DEFAULT_CONFIG}` to start from it)."
    )


if __name__ == "__main__":
    sys.argv[1:], config_note = config_in_use(sys.argv[1:])
    parser = TrlParser(
        (ScriptArguments, VARGRPOConfig), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    script_args, training_args = parser.parse_args_and_config()
    logger.warning(config_note)
    main(script_args, training_args)
