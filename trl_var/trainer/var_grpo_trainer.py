import copy
import os
import textwrap
import warnings
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from accelerate.utils import is_peft_model
from datasets import Dataset, IterableDataset
from torch.distributed.fsdp import FSDPModule
from transformers import AutoModel, PreTrainedModel, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import logging
from trl import GRPOTrainer
from trl.models.utils import prepare_deepspeed, prepare_fsdp, unwrap_model_for_generation
from trl.trainer.callbacks import SyncRefModelCallback

from ..models.pipeline import images_to_pil
from ..models.protocol import check_policy
from .callbacks import LogSampleImagesCallback
from .credit import panw_weights, propagate_mask, rasterize_regions, soft_value, vmr_stage
from .model_card import build_model_card
from .monitoring import image_statistics, logprob_agreement
from .preflight import hub_repository_error_message, resolve_prefix_scales
from .run_folder import check_checkpoint, check_run_settings, last_good_checkpoint, lock_output_dir, training_settings
from .var_grpo_config import VARGRPOConfig


logger = logging.get_logger(__name__)

# TRL 1.16's `unwrap_model_for_generation` reads `model.is_gradient_checkpointing`, which transformers 5 deprecates
# with a FutureWarning at every rollout; nothing for our users to act on.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


@runtime_checkable
class ProvidesRegions(Protocol):
    """
    A reward function that also says where, in each image it just scored, the reward came from (for Mask
    Propagation): `last_regions[i]` lists `(left, top, right, bottom)` pixel boxes of image `i` of its last call.
    The attribute must exist from construction (an empty list), since the trainer looks for it when it is built.
    [`~trl_var.rewards.OCRReward`] provides its word boxes.
    """

    last_regions: list[list[tuple[float, float, float, float]]]


@dataclass
class GenerationRound:
    r"""
    One generation round's data, handed between the TRL hooks that sample, score and train on it:
    `_generate_and_score_completions` creates it, `_generate` and `_calculate_rewards` (which TRL calls from there)
    fill it, and the loss of the round's optimizer updates reads it.

    Args:
        stage (`str`):
            `"prefix"` or `"suffix"` (VMR), or `"full"`: which scales are sampled, scored and trained.
        continuation_ids (`list[list[int]]`, *optional*):
            Prefix round: the tokens of the `K` whole images that continue each rollout, the images the rewards score.
        region_masks (`torch.Tensor`, *optional*):
            Mask Propagation: finest-grid masks `(rows, H, W)` of where each rollout's reward came from.
        logps_to_check (`torch.Tensor`, *optional*):
            During the round's first optimizer update, the sampled log-probs of the micro-batch in the loss: its
            log-prob pass compares them with the recomputed ones.
    """

    stage: str = "full"
    continuation_ids: list[list[int]] | None = None
    region_masks: torch.Tensor | None = None
    logps_to_check: torch.Tensor | None = None


class VARGRPOTrainer(GRPOTrainer):
    r"""
    GRPO for visual autoregressive (next-scale prediction) text-to-image models, following
    [VAR RL Done Right](https://huggingface.co/papers/2601.02256).

    A rollout is one image: the prompt's text tokens are TRL's `prompt_ids`, all image tokens of all scales (coarse to
    fine, row-major) are `completion_ids`, so TRL's buffering, advantages, loss types, clipping, KL, reward weighting
    and metrics apply unchanged. What changes w.r.t. [`~trl.GRPOTrainer`] is how a rollout is sampled, scored and
    weighted: `_generate` samples images scale by scale from a KV cache, with classifier-free guidance, and hands the
    decoded PIL images to the reward functions as `completions`; `_calculate_rewards` scores them;
    `_generate_and_score_completions` writes per-token loss weights into `completion_mask`; and
    `_get_per_token_logps_and_entropies` is one teacher-forced pass over prompt + all scales. Besides, with `beta > 0`
    the reference model is a frozen copy of the policy (TRL would reload it from `config._name_or_path`, which an
    in-memory model lacks); `log_completions` logs image grids ([`~trl_var.trainer.callbacks.LogSampleImagesCallback`])
    instead of TRL's completion table; `_compute_loss` adds monitoring only; the model card is a text-to-image one;
    and the output folder is safe to rerun into: `train` takes its lock, records or checks the run's settings and
    resumes from the last complete checkpoint (`trl_var.trainer.run_folder`), and a failed Hub repository creation
    (`init_hf_repo`) names the repository and the endpoint.

    The paper's three components, each switched by `VARGRPOConfig` alone:

    - Value as Middle Return (`vmr_*`): `_generate_and_score_completions` picks the stage of the round (3 prefix
      rounds, then 1 suffix round; a round is one optimizer update with the default batching). A prefix round samples
      the first `m` scales of every rollout, then `K` continuations from each prefix's KV cache; `_calculate_rewards`
      scores the `K` images and rewards the prefix with their soft value `eta * log(mean(exp(R_k / eta)))`, and only
      the prefix tokens are trained. A suffix round trains only the suffix tokens on the terminal reward; by default
      the images of a prompt continue one shared prefix. With several reward functions the soft value is taken per
      function, then TRL aggregates them as it aggregates terminal rewards (exact for one reward function, as in the
      paper).
    - PANW (`panw_alpha`) and MP (`mask_propagation`): the per-token weights `k_t * m_tij` ride in TRL's
      `completion_mask`, normalized per rollout (see `_token_weights`), so every loss type applies them to the
      policy and KL terms alike.

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
            @inproceedings{sun2026varrl,
                title        = {{VAR RL Done Right: Tackling Asynchronous Policy Conflicts in Visual Autoregressive Generation}},
                author       = {Shikun Sun and Liao Qu and Huichao Zhang and Yiheng Liu and Yangyang Song and Xian Li and Xu Wang and Yi Jiang and Daniel K. Du and Xinglong Wu and Jia Jia},
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
        # what `train` records in, or checks against, `output_dir`: the settings as given, before TRL's setup fills some
        self._training_settings = training_settings(args)
        if isinstance(model, str):
            model = AutoModel.from_pretrained(model, **(args.model_init_kwargs or {}))
        check_policy(model)  # a model of another type (a language model, ...) fails here, naming the supported types
        if processing_class is None and not model.config._name_or_path:
            raise ValueError(
                "`processing_class` is None and the model was not loaded from a folder or the Hub, so there is no "
                "tokenizer to load: pass the text tokenizer as `processing_class`."
            )
        _check_prompt_dataset(train_dataset, "train_dataset")
        if eval_dataset is not None:
            _check_prompt_dataset(eval_dataset, "eval_dataset")
        # The method's settings are checked against the model before TRL's setup writes to `output_dir`
        prefix_scales = resolve_prefix_scales(model.scale_schedule, args.vmr_prefix_scales)
        local_batch = args.per_device_train_batch_size * args.steps_per_generation
        if prefix_scales and args.vmr_suffix_grouping == "shared_prefix" and local_batch % args.num_generations:
            raise ValueError(
                f"vmr_suffix_grouping='shared_prefix' needs whole groups on every process, but "
                f"per_device_train_batch_size * steps_per_generation = {local_batch} is not a multiple of "
                f"num_generations = {args.num_generations}. Change the batch, or use vmr_suffix_grouping='independent'."
            )
        if args.gradient_checkpointing and not model.supports_gradient_checkpointing:
            logger.warning(f"{type(model).__name__} does not support gradient checkpointing: turning it off.")
            args.gradient_checkpointing = False

        # TRL builds the reference model from `config._name_or_path`; ours is a frozen copy of the initial policy,
        # made before TRL patches the policy's forward. With PEFT, TRL's adapter-disabled reference is kept.
        own_reference = args.beta != 0.0 and peft_config is None and not is_peft_model(model)
        ref_model = copy.deepcopy(model).eval().requires_grad_(False) if own_reference else None
        beta, sync_ref_model = args.beta, args.sync_ref_model
        if own_reference:
            args.beta, args.sync_ref_model = 0.0, False  # hide them from TRL's reference loading
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
        if own_reference:
            self.beta = beta
            if self.is_deepspeed_enabled:
                self.ref_model = prepare_deepspeed(ref_model, self.accelerator)
            elif self.is_fsdp_enabled:
                self.ref_model = prepare_fsdp(ref_model, self.accelerator)
            else:
                self.ref_model = self.accelerator.prepare_model(ref_model, evaluation_mode=True)
            if sync_ref_model:
                self.add_callback(SyncRefModelCallback(ref_model=self.ref_model, accelerator=self.accelerator))

        policy = self.accelerator.unwrap_model(self.model)
        self.scale_schedule = policy.scale_schedule
        # Every rollout has the same number of image tokens (dr_grpo normalizes by it).
        self.max_completion_length = policy.num_image_tokens
        # TRL would write the completions (PIL images) to a parquet table: a callback logs image grids instead. Added
        # after TRL's setup, so that it runs after the trackers' callbacks, which start their runs on the first log.
        if self.log_completions:
            self.add_callback(LogSampleImagesCallback(self))
        self.log_completions = False

        # The paper's three components
        self.prefix_scales = prefix_scales
        self.scale_weights = panw_weights(self.scale_schedule, args.panw_alpha)
        self.token_scale_index = policy.image_scale_index.cpu()  # the loss weights are built on CPU, then moved
        self.region_rewards = [func for func in self.reward_funcs if isinstance(func, ProvidesRegions)]
        if args.mask_propagation and not self.region_rewards:
            logger.warning(
                "mask_propagation=True, but no reward function provides regions (a `last_regions` attribute, as "
                "OCRReward has): the loss is not gated."
            )
        # The latest round (training or evaluation), and the training round whose buffered batches the optimizer
        # updates consume: an evaluation round can come between two updates of one training round.
        self._round = self._train_round = GenerationRound()

    def _current_stage(self) -> str:
        """
        `"prefix"` or `"suffix"` (VMR), or `"full"` (VMR off, or evaluation). The alternation counts generation
        rounds: one optimizer update each by default; when a round serves several updates (`num_iterations` or
        `steps_per_generation` above `gradient_accumulation_steps`) all of them have the round's stage, and the
        3:1 ratio of updates holds. Derived from `global_step`, so a resumed run continues the cycle.
        """
        if self.prefix_scales == 0 or not self.model.training:
            return "full"
        updates_per_round = max(
            self.num_iterations * self.args.steps_per_generation // self.args.gradient_accumulation_steps, 1
        )
        round_index = self.state.global_step // updates_per_round
        return vmr_stage(round_index, self.args.vmr_prefix_updates, self.args.vmr_suffix_updates)

    # ------------------------------------------------------------------ rollouts

    def _generate_and_score_completions(self, inputs):
        # A generation round belongs to the VMR stage of the optimizer update it starts at.
        self._round = GenerationRound(stage=self._current_stage())
        if self.model.training:
            self._train_round = self._round
        output = super()._generate_and_score_completions(inputs)  # calls `_generate`, then `_calculate_rewards`
        num_rows, num_tokens = output["completion_ids"].shape
        weights = self._token_weights(num_rows, num_tokens, self._round.stage, self._round.region_masks)
        # TRL multiplies the per-token loss by the float `completion_mask`: the weights ride in it
        output["completion_mask"] = weights.to(output["completion_mask"].device)
        # ... and token-level losses ("dapo") divide by the mask's global sum, which TRL took of its 0/1 mask
        output["num_items_in_batch"] = self.accelerator.gather(output["completion_mask"].sum()).sum()
        return output

    def _generate(self, prompts: list):
        _check_prompts(prompts)
        device = self.accelerator.device
        mode = "train" if self.model.training else "eval"
        stage = self._round.stage
        sampling = self.args.sampling_kwargs(evaluation=mode == "eval")  # evaluation may decode differently
        chunk = self._rows_per_call(stage, len(prompts))
        prompt_ids, rollout_ids, rollout_logprobs, full_ids, decoded = [], [], [], [], []
        with (
            unwrap_model_for_generation(
                self.model_wrapped,
                self.accelerator,
                gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
            ) as unwrapped_model,
            torch.no_grad(),
            self.accelerator.autocast(),
        ):
            for start in range(0, len(prompts), chunk):
                text = self.processing_class(
                    text=prompts[start : start + chunk],
                    padding=True,
                    padding_side="left",  # the image tokens follow the last text token of every row
                    return_tensors="pt",  # special tokens as the policy was trained with (T5 ends with </s>)
                ).to(device)
                ids, logprobs, full = self._sample_rollouts(unwrapped_model, text, prompts, start, stage, sampling)
                prompt_ids += [
                    row[mask.bool()].tolist() for row, mask in zip(text["input_ids"], text["attention_mask"])
                ]
                rollout_ids += ids.tolist()
                rollout_logprobs += logprobs.tolist()
                full_ids.append(full)
                if isinstance(unwrapped_model, FSDPModule):
                    # FSDP2 gathers parameters around `forward`, and around `generate`, which the Trainer registers;
                    # decoding reads the root's own (the image tokenizer's) outside both, and the root may have
                    # resharded after `generate` (`set_reshard_after_forward`). A no-op when they are gathered.
                    unwrapped_model.unshard()
                decoded.append(unwrapped_model.decode_image_tokens(full))
        full_ids, decoded = torch.cat(full_ids), torch.cat(decoded)
        images = images_to_pil(decoded)
        self._log_image_statistics(decoded, stage, mode)

        if stage == "prefix":
            # TRL keeps one completion per rollout: a prefix's is the list of its K continuations' images, and their
            # tokens wait in the round for `_calculate_rewards` (TRL's `completion_ids` are the prefix's)
            num = self.args.vmr_num_continuations
            completions = [images[i * num : (i + 1) * num] for i in range(len(prompts))]
            self._round.continuation_ids = full_ids.tolist()
        else:
            completions = images

        num_tokens = torch.tensor([sum(map(len, prompt_ids)) + full_ids.numel()], device=device)
        if mode == "train":
            self.state.num_input_tokens_seen += self.accelerator.gather(num_tokens).sum().item()
        self._metrics[mode]["num_tokens"] = [self.state.num_input_tokens_seen]
        # tool_mask, extra_fields, images (these would be *prompt* images for TRL), tool_images
        return prompt_ids, rollout_ids, None, completions, rollout_logprobs, {}, None, []

    def _rows_per_call(self, stage: str, num_rows: int) -> int:
        """Rows per `generate` call so that each call samples at most `rollout_batch_size` images."""
        images = self.args.rollout_batch_size
        if images is None:
            return num_rows
        if stage == "prefix":  # every row is K images
            return max(images // self.args.vmr_num_continuations, 1)
        if stage == "suffix" and self.args.vmr_suffix_grouping == "shared_prefix":  # whole groups: one prefix each
            return max(images // self.num_generations, 1) * self.num_generations
        return images

    def _sample_rollouts(self, model, text, prompts: list[str], start: int, stage: str, sampling: dict):
        """
        Rollouts of one chunk of rows: the tokens and log-probs that are trained (the prefix in a prefix round, the
        whole image otherwise) and the whole images' tokens to score (the K continuations in a prefix round).
        """
        input_ids, attention_mask = text["input_ids"], text["attention_mask"]
        if stage == "prefix":
            # K continuations of every prefix, from its KV cache: their rewards estimate the prefix's value.
            prefix = model.generate(input_ids, attention_mask, num_scales=self.prefix_scales, **sampling)
            full = model.generate(state=prefix.state.repeat_interleave_(self.args.vmr_num_continuations), **sampling)
            return prefix.image_ids, prefix.logprobs, full.image_ids
        if stage == "suffix" and self.args.vmr_suffix_grouping == "shared_prefix":
            # The images of a prompt continue one shared prefix: the middle state of the suffix problem.
            leaders, group_of_row = self._local_groups(prompts, start, input_ids.shape[0], input_ids.device)
            prefix = model.generate(
                input_ids[leaders], attention_mask[leaders], num_scales=self.prefix_scales, **sampling
            )
            full = model.generate(state=prefix.state.select_rows_(group_of_row), **sampling)
            return full.image_ids, full.logprobs, full.image_ids
        full = model.generate(input_ids, attention_mask, **sampling)
        return full.image_ids, full.logprobs, full.image_ids

    def _local_groups(
        self, prompts: list[str], start: int, num_rows: int, device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        For rows `start .. start + num_rows` of this process: the first row of every prompt group (relative to
        `start`), and the group (among those) of every row. TRL's sampler puts the `num_generations` copies of a
        prompt in consecutive rows; the trainer checks at construction that groups are whole on every process, and
        `_rows_per_call` keeps them whole in every sampling call.
        """
        # TRL gives every process a contiguous slice of the generation batch, so rows number globally like this
        first_row = self.accelerator.process_index * len(prompts) + start
        groups = (first_row + torch.arange(num_rows)) // self.num_generations
        _, group_of_row = torch.unique_consecutive(groups, return_inverse=True)
        leaders = torch.cat([torch.zeros(1, dtype=torch.long), (groups[1:] != groups[:-1]).nonzero().flatten() + 1])
        prompts = prompts[start : start + num_rows]
        for row, group in enumerate(group_of_row.tolist()):
            if prompts[row] != prompts[leaders[group]]:
                raise RuntimeError(
                    "vmr_suffix_grouping='shared_prefix' expects the num_generations copies of a prompt in consecutive "
                    "rows (TRL's RepeatSampler); use vmr_suffix_grouping='independent' with another sampler."
                )
        return leaders.to(device), group_of_row.to(device)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        """
        The rewards `(rows, reward functions)`, gathered over processes, that TRL turns into advantages. A prefix
        round scores the `K` continuations of every prefix and rewards the prefix with their soft value, per reward
        function. The reward regions (Mask Propagation) go to the round.
        """
        prefix_round = self._round.stage == "prefix"
        num = self.args.vmr_num_continuations if prefix_round else 1
        images = [image for continuations in completions for image in continuations] if prefix_round else completions
        if prefix_round:  # the reward functions see every continuation as a row of its own
            inputs, prompts = _repeat_rows(inputs, num), _repeat_rows(prompts, num)
            completion_ids_list = self._round.continuation_ids
        rewards = super()._calculate_rewards(inputs, prompts, images, completion_ids_list)
        # read now: a region reward's `last_regions` describes its latest call only
        self._round.region_masks = self._region_masks(images, continuations=num)
        if prefix_round:
            # gathered rows are (process, prompt row, continuation); one soft value per reward function (class doc)
            per_prefix = rewards.view(-1, num, rewards.shape[1])
            values = soft_value(per_prefix.transpose(1, 2), self.args.vmr_eta)
            weights = self.reward_weights.to(rewards.device)
            self._metrics["train"]["vmr/continuation_reward"].append((rewards * weights).nansum(1).nanmean().item())
            self._metrics["train"]["vmr/value"].append((values * weights).nansum(1).nanmean().item())
            rewards = values
        # All TRL still does with the images is gather them to every process for the sample log: replace them, in the
        # list TRL holds, by thumbnails
        for i, completion in enumerate(completions):
            completions[i] = [_thumbnail(c) for c in completion] if prefix_round else _thumbnail(completion)
        return rewards

    def _log_image_statistics(self, images: torch.Tensor, stage: str, mode: str):
        """Reward-hacking monitor: statistics the reward does not measure, averaged over processes."""
        # in a prefix round the images are the K continuations of each rollout; a group is then K * G images
        num_generations = self.num_generations if mode == "train" else self.num_generations_eval
        group_size = num_generations * (self.args.vmr_num_continuations if stage == "prefix" else 1)
        stats = image_statistics(images, group_size)
        values = self.accelerator.reduce(torch.tensor(list(stats.values()), device=images.device), "mean")
        for name, value in zip(stats, values.tolist(), strict=True):
            self._metrics[mode][f"images/{name}"].append(value)

    # ------------------------------------------------------------------ loss weights (PANW x MP x stage)

    def _region_masks(self, images, continuations: int) -> torch.Tensor | None:
        """
        Finest-grid masks `(rows, H, W)` of the reward-relevant regions of this process's rollouts (the union over a
        prefix's continuations), `None` when MP is off or no reward provides regions. A rollout where no region was
        found is all ones: no gating.
        """
        if not (self.args.mask_propagation and self.region_rewards):
            return None
        grid = self.scale_schedule[-1]
        masks = torch.zeros(len(images), *grid, dtype=torch.bool)
        found = torch.zeros(len(images), dtype=torch.bool)
        for reward_func in self.region_rewards:
            for row, (image, regions) in enumerate(zip(images, reward_func.last_regions, strict=True)):
                mask = rasterize_regions(regions, image.size, grid, dilation=self.args.mask_dilation)
                if mask is not None:
                    masks[row] |= mask
                    found[row] = True
        masks = masks.view(-1, continuations, *grid).any(1)
        found = found.view(-1, continuations).any(1)
        masks[~found] = True  # nothing found (say, OCR read no word): train the whole image rather than none of it
        return masks

    def _token_weights(
        self, num_rows: int, num_tokens: int, stage: str, region_masks: torch.Tensor | None
    ) -> torch.Tensor:
        r"""
        Per-token loss weights `(rows, num_tokens)` that TRL's float `completion_mask` carries into every loss type:
        `k_t * m_tij * [token trained in this stage]`, rescaled per row so that the weights sum to the number of
        trained tokens. Then TRL's per-row `sum(w * l) / sum(w)` ("grpo") is the paper's
        `sum_t k_t sum_ij m_tij l_tij / sum_t k_t sum_ij m_tij`, token counts keep their meaning for "dapo" / "bnpo",
        and `panw_alpha=0` with no mask gives exactly ones (plain GRPO).
        """
        scale_index = self.token_scale_index[:num_tokens]
        trained = torch.ones(num_tokens, dtype=torch.bool)
        if stage == "suffix":
            trained &= scale_index >= self.prefix_scales
        if region_masks is None:
            active = trained.float().expand(num_rows, -1)
        else:
            per_scale = propagate_mask(region_masks, self.scale_schedule)
            flat = torch.cat([m.flatten(1) for m in per_scale], 1)[:, :num_tokens]
            active = (flat & trained).float()
        weights = active * self.scale_weights[scale_index]
        # rescale each row to sum to its number of trained tokens (TRL clamps normalizers to >= 1)
        weights = weights * (active.sum(1, keepdim=True) / weights.sum(1, keepdim=True).clamp(min=1e-12))
        self._log_weight_metrics(weights, active, scale_index, masked=region_masks is not None)
        return weights

    def _log_weight_metrics(self, weights, active, scale_index, masked: bool):
        """Share of the loss weight of every scale (PANW) and, with MP, the fraction of its tokens trained."""
        mode = "train" if self.model.training else "eval"
        num_scales = int(scale_index.max()) + 1
        per_scale = torch.zeros(3, num_scales)
        per_scale[0].index_add_(0, scale_index, weights.sum(0))
        per_scale[1].index_add_(0, scale_index, active.sum(0))
        per_scale[2].index_add_(0, scale_index, torch.full_like(scale_index, weights.shape[0], dtype=torch.float))
        per_scale = self.accelerator.reduce(per_scale.to(self.accelerator.device), reduction="sum").cpu()
        share = per_scale[0] / per_scale[0].sum().clamp(min=1e-12)
        for t in range(num_scales):
            self._metrics[mode][f"panw/weight_share/scale_{t}"].append(share[t].item())
            if masked:
                self._metrics[mode][f"mp/coverage/scale_{t}"].append((per_scale[1, t] / per_scale[2, t]).item())

    # ------------------------------------------------------------------ log-probs

    def _compute_loss(self, model, inputs):
        # Before the first optimizer update of a generation round the policy is the one that sampled: its recomputed
        # log-probs must equal the sampled ones. Compare them in the loss's own log-prob pass (no extra forward).
        generate_every = self.args.steps_per_generation * self.num_iterations
        fresh = self.model.training and self._step % generate_every < self.current_gradient_accumulation_steps
        self._train_round.logps_to_check = inputs.get("sampling_per_token_logps") if fresh else None
        # `_round` may be an evaluation round by now: the update belongs to the buffered training round
        if self.model.training and self._train_round.stage != "full":
            self._metrics["train"]["vmr/prefix_update"].append(float(self._train_round.stage == "prefix"))
        return super()._compute_loss(model, inputs)

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
        # the pass goes through the wrapped model's `forward`, so that DDP / FSDP hooks see it
        policy = self.accelerator.unwrap_model(model)
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
            # the policy decides how a token's log-prob follows from its logits (a codebook softmax, a sum over bits)
            logps, entropies = policy.logprobs_from_logits(
                logits, image_ids[rows], temperature=self.temperature, compute_entropy=compute_entropy
            )
            if compute_entropy:  # the loss's pass
                all_entropies.append(entropies)
            all_logps.append(logps)
        entropies = torch.cat(all_entropies) if compute_entropy else None
        logps = torch.cat(all_logps)
        sampled_logps = self._train_round.logps_to_check
        if compute_entropy and sampled_logps is not None:  # the loss's pass, on the round's first update
            agreement = logprob_agreement(
                sampled_logps, logps, self.token_scale_index[: logps.shape[1]], len(self.scale_schedule)
            )
            values = torch.tensor(list(agreement.values()), device=logps.device)
            worst = self.accelerator.reduce(values, "max")  # max_abs_diff: the worst process
            mean = self.accelerator.reduce(values, "mean")
            for (name, _), worst_value, mean_value in zip(
                agreement.items(), worst.tolist(), mean.tolist(), strict=True
            ):
                value = worst_value if name == "max_abs_diff" else mean_value
                self._metrics["train"][f"logprob_agreement/{name}"].append(value)
            self._train_round.logps_to_check = None  # checked once per micro-batch
        return logps, entropies, None  # no auxiliary (mixture-of-experts) loss

    # ------------------------------------------------------------------ the output folder

    def train(
        self,
        resume_from_checkpoint: str | bool | None = None,
        trial=None,
        ignore_keys_for_eval: list[str] | None = None,
    ):
        """
        [`~transformers.Trainer.train`] into an output folder made safe to rerun into (`trl_var.trainer.run_folder`):
        on the process that saves, it first takes the lock of `output_dir` (held until the process ends), so that a
        second training into it fails at once, and records the run's settings (`args` as the trainer was built with
        them) in its `run_settings.json`, or refuses a folder that records other ones, before any step. And
        `resume_from_checkpoint=True` resumes from the newest *complete* checkpoint, skipping, with a warning, one a
        kill left half-written (transformers would take the newest and fail on it), or trains from the start, with a
        warning, when no checkpoint is complete (a folder without any checkpoint is still refused, as transformers
        does); a checkpoint path given is checked the same way.
        """
        output_dir = self.args.output_dir
        if self.args.should_save:
            lock_output_dir(output_dir)
            check_run_settings(output_dir, {"training": self._training_settings})
        if resume_from_checkpoint is True and os.path.isdir(output_dir) and get_last_checkpoint(output_dir):
            resume_from_checkpoint = last_good_checkpoint(output_dir)
            if resume_from_checkpoint is None:
                logger.warning(f"No checkpoint in {output_dir} is complete (see above): training from the start.")
            else:
                logger.warning(
                    f"Resuming from {resume_from_checkpoint}, the last complete checkpoint in {output_dir}."
                )
        elif resume_from_checkpoint and os.path.isdir(resume_from_checkpoint):
            problem = check_checkpoint(resume_from_checkpoint)
            if problem is not None:
                raise ValueError(f"Cannot resume from the checkpoint {resume_from_checkpoint}: {problem}.")
        return super().train(resume_from_checkpoint, trial, ignore_keys_for_eval)

    # ------------------------------------------------------------------ Hub

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        """
        Creates the Hub repository, as [`~transformers.Trainer.init_hf_repo`] does (when the trainer is built with
        `push_to_hub`, or by the first `push_to_hub`). What differs: its error gets a note naming the repository,
        the Hub endpoint and that it came from creating the repository.
        """
        try:
            super().init_hf_repo(token, private)
        except Exception as error:
            name = self.args.hub_model_id or os.path.basename(os.path.abspath(self.args.output_dir))
            error.add_note(hub_repository_error_message(name, error))
            raise

    def create_model_card(
        self,
        model_name: str | None = None,
        dataset_name: str | None = None,
        tags: str | list[str] | None = None,
        results: dict | str | os.PathLike | None = None,
    ) -> None:
        """
        Write the model card, `README.md` in `output_dir`, which `push_to_hub` uploads with the model: TRL's card for a
        text-to-image VAR model, with the training configuration, the decoding settings and the evaluation (`results`:
        a dict or a `results.json` / `results.md` path; by default those files in `output_dir`). See
        [`~trl_var.trainer.model_card.build_model_card`].
        """
        if self.is_world_process_zero():
            card = build_model_card(self, model_name, dataset_name, tags, results)
            card.save(os.path.join(self.args.output_dir, "README.md"))

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        **kwargs,
    ):
        """
        Upload the model (with its image tokenizer), the text tokenizer and the model card to `args.hub_model_id`;
        `kwargs` (`dataset_name`, `results`, ...) go to `create_model_card`.

        What differs from [`~transformers.Trainer.push_to_hub`]: a failed push leaves the model saved in `output_dir`
        (the Trainer creates the repository before it saves) and its error says where the model is and how to upload
        it again.
        """
        try:
            return super().push_to_hub(commit_message, blocking, token, revision, private, **kwargs)
        except Exception as error:
            if self.hub_model_id is None and self.is_world_process_zero():
                # The repository could not be created, before anything was saved
                self.save_model(_internal_call=True)
                self.create_model_card(**kwargs)
            repo_id = (
                self.hub_model_id or self.args.hub_model_id or os.path.basename(os.path.abspath(self.args.output_dir))
            )
            message = (
                f"Pushing to the Hub repository {repo_id!r} failed ({type(error).__name__}: {error}). The model is "
                f"saved in {self.args.output_dir}: upload it with `trainer.push_to_hub()` again, or with "
                f"`hf upload {repo_id} {self.args.output_dir} --exclude 'checkpoint-*'`."
            )
            error.add_note(message)
            # with what `init_hf_repo` noted, when creating the repository failed
            logger.error(" ".join(error.__notes__))
            raise


def _thumbnail(image, size: int = 256):
    if max(image.size) <= size:
        return image
    thumbnail = image.copy()
    thumbnail.thumbnail((size, size))
    return thumbnail


def _repeat_rows(rows: list, times: int) -> list:
    return [row for row in rows for _ in range(times)]


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
