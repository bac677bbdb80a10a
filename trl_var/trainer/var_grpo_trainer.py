import copy
import os
import textwrap

import torch
from datasets import Dataset, IterableDataset
from transformers import AutoModel, PreTrainedModel, TrainerCallback
from transformers.integrations import TensorBoardCallback, WandbCallback
from transformers.utils import logging
from trl import GRPOTrainer
from trl.models.utils import unwrap_model_for_generation
from trl.trainer.utils import selective_log_softmax, selective_log_softmax_and_entropy

from ..models.pipeline_var import images_to_pil
from ..visualization import make_image_grid
from .var_grpo_config import VARGRPOConfig


logger = logging.get_logger(__name__)


class VARGRPOTrainer(GRPOTrainer):
    r"""
    GRPO for visual autoregressive (next-scale prediction) text-to-image models, following
    [VAR RL Done Right](https://huggingface.co/papers/2601.02256).

    A rollout is one image: the prompt's text tokens are TRL's `prompt_ids`, all image tokens of all scales (coarse to
    fine, row-major) are `completion_ids`, so TRL's buffering, loss types, clipping, KL, reward weighting and metrics
    apply unchanged. What differs from [`~trl.GRPOTrainer`]:

    - `_generate`: rollouts are sampled scale by scale with a KV cache, with classifier-free guidance, top-k and top-p
      (`VARGRPOConfig`), and decoded to PIL images, which reward functions receive as `completions`;
    - `_get_per_token_logps_and_entropies`: one teacher-forced pass over prompt + all scales;
    - with `beta > 0` the reference model is a frozen copy of the policy (TRL would reload it from
      `config._name_or_path`, which an in-memory model does not have);
    - `log`: sample images with their prompts and rewards go to the trackers (`log_completions`).

    Args:
        model (`str` or [`VARForImageGeneration`]):
            The policy, or a path / Hub id that `AutoModel.from_pretrained` loads (after `import trl_var`).
        reward_funcs, args, train_dataset, eval_dataset, processing_class, callbacks, optimizers, peft_config:
            As in [`~trl.GRPOTrainer`]. Reward functions are ordinary TRL reward callables: they receive the PIL images
            as `completions`, the prompts as `prompts` and every dataset column as a keyword argument. The dataset
            needs a `prompt` column of plain-text prompts.
    """

    _tag_names = ["trl", "grpo", "var", "trl-var"]
    _name = "VAR-GRPO"
    _paper = {
        "title": "VAR RL Done Right: Tackling Asynchronous Policy Conflicts in Visual Autoregressive Generation",
        "id": "2601.02256",
        "citation": textwrap.dedent("""\
            @inproceedings{varrl2026,
                title        = {{VAR RL Done Right: Tackling Asynchronous Policy Conflicts in Visual Autoregressive Generation}},
                booktitle    = {CVPR},
                year         = 2026,
                eprint       = {arXiv:2601.02256},
            }"""),
    }

    def __init__(
        self,
        model: "str | PreTrainedModel",
        reward_funcs,
        args: VARGRPOConfig | None = None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset=None,
        processing_class=None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers=(None, None),
        peft_config=None,
    ):
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path or "var"
            args = VARGRPOConfig(f"{os.path.basename(name.rstrip('/'))}-VAR-GRPO")
        if isinstance(model, str):
            model = AutoModel.from_pretrained(model, **(args.model_init_kwargs or {}))
        if processing_class is None and not model.config._name_or_path:
            raise ValueError(
                "`processing_class` is None and the model was not loaded from a folder or the Hub, so there is no "
                "tokenizer to load: pass the text tokenizer as `processing_class`."
            )
        _check_prompt_dataset(train_dataset, "train_dataset")
        if eval_dataset is not None:
            _check_prompt_dataset(eval_dataset, "eval_dataset")
        if args.gradient_checkpointing and not model.supports_gradient_checkpointing:
            logger.warning(f"{type(model).__name__} does not support gradient checkpointing: turning it off.")
            args.gradient_checkpointing = False

        # TRL builds the reference model from `config._name_or_path`; ours is a frozen copy of the initial policy.
        # Both must be made before TRL patches the policy's forward.
        ref_model = copy.deepcopy(model).eval().requires_grad_(False) if args.beta != 0.0 else None
        beta, sync_ref_model = args.beta, args.sync_ref_model
        args.beta, args.sync_ref_model = 0.0, False
        try:
            super().__init__(
                model=model,
                reward_funcs=reward_funcs,
                args=args,
                train_dataset=train_dataset,
                eval_dataset=eval_dataset,
                processing_class=processing_class,
                callbacks=callbacks,
                optimizers=optimizers,
                peft_config=peft_config,
            )
        finally:
            args.beta, args.sync_ref_model = beta, sync_ref_model
        self.beta = beta
        if ref_model is not None and peft_config is None:
            if self.is_deepspeed_enabled:
                from trl.models.utils import prepare_deepspeed

                self.ref_model = prepare_deepspeed(ref_model, self.accelerator)
            elif self.is_fsdp_enabled:
                from trl.models.utils import prepare_fsdp

                self.ref_model = prepare_fsdp(ref_model, self.accelerator)
            else:
                self.ref_model = self.accelerator.prepare_model(ref_model, evaluation_mode=True)
        if sync_ref_model:
            if beta == 0.0:
                raise ValueError(
                    "`sync_ref_model=True` needs `beta > 0`: with `beta=0.0` there is no reference model."
                )
            from trl.trainer.callbacks import SyncRefModelCallback

            self.add_callback(SyncRefModelCallback(ref_model=self.ref_model, accelerator=self.accelerator))

        # Every rollout has the same number of image tokens (dr_grpo normalizes by it).
        self.max_completion_length = self.accelerator.unwrap_model(self.model).num_image_tokens
        # TRL would write the completions (PIL images) to a parquet table: we log image grids instead.
        self.log_images, self.log_completions = self.log_completions, False

    # ------------------------------------------------------------------ rollouts

    def _generate(self, prompts: list):
        _check_prompts(prompts)
        device = self.accelerator.device
        mode = "train" if self.model.training else "eval"
        text = self.processing_class(
            text=prompts, padding=True, padding_side="left", add_special_tokens=False, return_tensors="pt"
        ).to(device)
        with (
            unwrap_model_for_generation(
                self.model_wrapped,
                self.accelerator,
                gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
            ) as unwrapped_model,
            torch.no_grad(),
        ):
            with self.accelerator.autocast():
                output = unwrapped_model.generate(
                    text["input_ids"],
                    text["attention_mask"],
                    guidance_scale=self.args.guidance_scale,
                    guidance_schedule=self.args.guidance_schedule,
                    temperature=self.temperature,
                    top_k=self.top_k,
                    top_p=self.top_p,
                )
                images = unwrapped_model.decode_image_tokens(output.image_ids)
        completions = images_to_pil(images)

        prompt_ids = [ids[mask.bool()].tolist() for ids, mask in zip(text["input_ids"], text["attention_mask"])]
        completion_ids = output.image_ids.tolist()
        logprobs = output.logprobs.tolist()

        num_tokens = torch.tensor(
            [sum(len(ids) for ids in prompt_ids) + output.image_ids.numel()], device=device, dtype=torch.long
        )
        if mode == "train":
            self.state.num_input_tokens_seen += self.accelerator.gather(num_tokens).sum().item()
        self._metrics[mode]["num_tokens"] = [self.state.num_input_tokens_seen]
        # tool_mask, extra_fields, images (these would be *prompt* images for TRL), tool_images
        return prompt_ids, completion_ids, None, completions, logprobs, {}, None, []

    # ------------------------------------------------------------------ log-probs

    def _get_per_token_logps_and_entropies(
        self,
        model,
        input_ids,
        attention_mask,
        logits_to_keep,
        batch_size=None,
        compute_entropy=False,
        compute_aux_loss=False,
        **multimodal_kwargs,
    ):
        """One teacher-forced pass: the last `logits_to_keep` tokens of every row are its image tokens."""
        batch_size = batch_size or input_ids.size(0)
        text_ids, image_ids = input_ids[:, :-logits_to_keep], input_ids[:, -logits_to_keep:]
        # Only the text part of the mask is an attention mask: the completion part may carry loss weights.
        text_mask = attention_mask[:, :-logits_to_keep]
        all_logps, all_entropies = [], []
        for start in range(0, input_ids.size(0), batch_size):
            rows = slice(start, start + batch_size)
            with self.accelerator.autocast():
                logits = model(
                    input_ids=text_ids[rows], image_ids=image_ids[rows], attention_mask=text_mask[rows]
                ).logits
            if compute_entropy:
                logps, entropies = selective_log_softmax_and_entropy(
                    logits, image_ids[rows], temperature=self.temperature
                )
                all_entropies.append(entropies)
            else:
                logps = selective_log_softmax(logits / self.temperature, image_ids[rows])
            all_logps.append(logps)
        entropies = torch.cat(all_entropies) if compute_entropy else None
        return torch.cat(all_logps), entropies, None

    # ------------------------------------------------------------------ logging

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        super().log(logs, start_time)
        if self.log_images and self.model.training and self.accelerator.is_main_process and self._logs["completion"]:
            self._log_sample_images()

    def _log_sample_images(self):
        count = min(self.args.num_completions_to_print or 16, len(self._logs["completion"]))
        images = list(self._logs["completion"])[-count:]
        prompts = list(self._logs["prompt"])[-count:]
        rewards = {name: list(values)[-count:] for name, values in self._logs["rewards"].items()}
        captions = [
            " ".join([f"{name}={values[i]:.2f}" for name, values in rewards.items()] + [prompts[i]])
            for i in range(count)
        ]
        grid = make_image_grid(images, captions)
        step = self.state.global_step
        folder = os.path.join(self.args.output_dir, "samples")
        os.makedirs(folder, exist_ok=True)
        grid.save(os.path.join(folder, f"step-{step:06d}.png"))
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, TensorBoardCallback) and callback.tb_writer is not None:
                import numpy as np

                callback.tb_writer.add_image("samples", np.asarray(grid), step, dataformats="HWC")
            elif isinstance(callback, WandbCallback) and callback._wandb.run is not None:
                callback._wandb.log({"samples": callback._wandb.Image(grid, caption=" | ".join(captions))}, step=step)


def _check_prompt_dataset(dataset, name: str):
    if dataset is None:
        return
    datasets = dataset.values() if isinstance(dataset, dict) else [dataset]
    for ds in datasets:
        columns = ds.column_names
        if columns is not None and "prompt" not in columns:
            raise ValueError(
                f"`{name}` has no 'prompt' column (columns: {columns}). Rename the column that holds the text "
                f"prompts, e.g. `dataset.rename_column('caption', 'prompt')`."
            )
        if isinstance(ds, Dataset):
            _check_prompts(ds["prompt"], name)


def _check_prompts(prompts, name: str = "prompts"):
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise ValueError(
                f"`{name}` row {i}: the prompt is a {type(prompt).__name__}, not a string. VARGRPOTrainer takes "
                "plain-text prompts (no chat messages)."
            )
        if not prompt.strip():
            raise ValueError(f"`{name}` row {i}: the prompt is empty. Every image needs a text prompt.")
