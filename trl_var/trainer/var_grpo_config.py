from dataclasses import dataclass, field

import torch
from trl import GRPOConfig

from ..models.sampling import SAMPLING_ARGUMENTS


@dataclass
class VARGRPOConfig(GRPOConfig):
    r"""
    Configuration class for the [`VARGRPOTrainer`]: GRPO on visual autoregressive (next-scale prediction) image
    generators, as in "VAR RL Done Right" ([arXiv 2601.02256](https://huggingface.co/papers/2601.02256)).

    Only the parameters specific to VAR rollouts, and the defaults that differ from [`~trl.GRPOConfig`], are listed
    here; see [`~trl.GRPOConfig`] for the rest. A rollout is one image: the prompt's tokens are the "prompt", all image
    tokens of all scales are the "completion", so TRL's loss types, clipping, KL and metrics apply unchanged.

    Sampling vs the optimized policy: rollouts are sampled with classifier-free guidance, top-k and top-p (the
    paper's strategy), but the log-probabilities that are optimized (and the "old" and reference ones) are those of the
    conditional policy, without guidance or filtering, with logits divided by `temperature`.

    Parameters:
        > Parameters that control sampling of the rollouts

        guidance_scale (`float`, *optional*, defaults to `5.0`):
            Classifier-free guidance scale of the rollouts: sampling logits are `uncond + s * (cond - uncond)`, the
            unconditional branch reading an empty prompt. `1.0` disables guidance (and halves the sampling cost).
        guidance_schedule (`str`, *optional*, defaults to `"constant"`):
            `"constant"`, or `"linear"` to ramp guidance from 1 at the first scale to `guidance_scale` at the last
            (VAR's schedule).
        top_k (`int`, *optional*, defaults to `2`):
            Top-k filtering of the rollouts (`0`: off). The paper samples with top-k 2.
        top_p (`float`, *optional*, defaults to `0.9`):
            Nucleus filtering of the rollouts. The paper samples with top-p 0.9.

        rollout_batch_size (`int`, *optional*):
            Images sampled (and decoded) per `generate` call; `None` samples a process's whole generation batch at
            once. Lower it when sampling runs out of memory (each image holds its KV cache, twice with guidance; see
            `benchmarks/plan_nextflow.py`). A prefix round samples `rollout_batch_size // K` rollouts per call (K
            continuations each); a shared-prefix suffix round samples whole groups (at least one).
        eval_guidance_scale (`float`, *optional*):
            Guidance of the images sampled in evaluation (`eval_strategy`); `None` uses `guidance_scale`.
        eval_top_k (`int`, *optional*):
            Top-k of evaluation sampling; `None` uses `top_k`.
        eval_top_p (`float`, *optional*):
            Top-p of evaluation sampling; `None` uses `top_p`.

        > Parameters of Value as Middle Return (VMR)

        vmr_prefix_scales (`int`, *optional*):
            `m`, the number of prefix scales: the horizon is split after scale `m`, the prefix is trained on the soft
            value of the middle state, the suffix on the terminal reward. `None` (default) follows the paper's rule:
            the scales that make a quarter-side image ("m256" of a 1024x1024 schedule: 12 of NextFlow's 18 scales;
            "m128" would be 8, "m512" 16). `0` turns VMR off (plain GRPO over whole images). Otherwise in
            `[1, number of scales - 1]`.
        vmr_num_continuations (`int`, *optional*, defaults to `2`):
            `K`, continuations sampled from every prefix to estimate its value (paper: 2; 1 and 4 were worse).
        vmr_eta (`float`, *optional*, defaults to `1.0`):
            Temperature of the soft value `eta * log(mean(exp(R_k / eta)))`: small tends to the max of the `K`
            rewards, large to their mean.
        vmr_prefix_updates (`int`, *optional*, defaults to `3`):
            Prefix updates per cycle of the alternation, counted in optimizer updates.
        vmr_suffix_updates (`int`, *optional*, defaults to `1`):
            Suffix updates per cycle (the paper's fine-grained 3:1 beat a coarse 300:100).
        vmr_suffix_grouping (`str`, *optional*, defaults to `"shared_prefix"`):
            Groups of a suffix update: `"shared_prefix"`, the `num_generations` images of a prompt continue one
            shared prefix (they start from the same middle state, the state of the suffix problem), or
            `"independent"`, every image has its own prefix.

        > Parameters of Per-Action Normalization Weighting (PANW)

        panw_alpha (`float`, *optional*, defaults to `0.6`):
            Every token of scale `t` is weighted by `k_t = (h_t * w_t) ** (-alpha)` in the loss (policy and KL
            terms), with step-level normalization `sum_t k_t sum_ij m_tij l_tij / sum_t k_t sum_ij m_tij`. `0` gives
            plain token-mean GRPO, `1` the same total weight to every scale; the paper recommends 0.6 - 0.8. That is
            each rollout's loss exactly with `loss_type="grpo"`; with "dapo" / "bnpo" rollouts are then averaged
            weighted by their number of trained tokens (which Mask Propagation makes differ). The metrics `entropy`,
            `kl` and `clip_ratio/*` become weighted averages too.

        > Parameters of Mask Propagation (MP)

        mask_propagation (`bool`, *optional*, defaults to `True`):
            Gate the per-token loss with the reward-relevant regions: reward functions that expose `last_regions`
            (the OCR reward's word boxes) give a mask on the finest token grid, propagated to coarser scales (a cell
            is on iff a finer cell under it is on). An image where no region was found is not gated.
        mask_dilation (`int`, *optional*, defaults to `0`):
            Grow the finest-grid mask by this many cells in every direction before propagating it.

        > Defaults that differ from [`~trl.GRPOConfig`]

        num_generations (`int`, *optional*, defaults to `16`):
            Group size: images per prompt. The paper uses 16.
        per_device_train_batch_size (`int`, *optional*, defaults to `16`):
            Images per device per step, so that the default generation batch holds whole groups of 16.
        learning_rate (`float`, *optional*, defaults to `1e-5`):
            AdamW learning rate of the paper (with `adam_beta2=0.95` and `weight_decay=0.05`).
        bf16 (`bool`, *optional*):
            Defaults to `True` only on a CUDA device that supports bfloat16: bf16 matmuls are ~4x slower than fp32 on
            CPUs.
        log_completions (`bool`, *optional*, defaults to `True`):
            Every `logging_steps`, log a grid of sample images with their prompts and rewards to the trackers of
            `report_to` and save it as `output_dir/samples/step-XXXXXX.png`. `num_completions_to_print` caps the
            number of images (default 16).
    """

    _name = "VAR-GRPO"

    guidance_scale: float = field(
        default=5.0,
        metadata={
            "help": "Classifier-free guidance scale of the rollouts (1.0 disables guidance). The optimized log-probs "
            "are always those of the conditional policy, without guidance."
        },
    )
    guidance_schedule: str = field(
        default="constant",
        metadata={
            "help": "'constant', or 'linear' to ramp guidance from 1 at the first scale to `guidance_scale` at the "
            "last (VAR).",
            "choices": ["constant", "linear"],
        },
    )
    top_k: int = field(
        default=2,
        metadata={"help": "Top-k filtering of the rollouts (0: off). The paper samples with top-k 2."},
    )
    top_p: float = field(
        default=0.9,
        metadata={"help": "Nucleus (top-p) filtering of the rollouts. The paper samples with top-p 0.9."},
    )
    rollout_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Rows sampled per generate call (None: all at once); lower it if sampling runs out of memory."
        },
    )
    eval_guidance_scale: float | None = field(
        default=None, metadata={"help": "Guidance of evaluation sampling; None: the same as the rollouts."}
    )
    eval_top_k: int | None = field(default=None, metadata={"help": "Top-k of evaluation sampling; None: `top_k`."})
    eval_top_p: float | None = field(default=None, metadata={"help": "Top-p of evaluation sampling; None: `top_p`."})
    vmr_prefix_scales: int | None = field(
        default=None,
        metadata={
            "help": "VMR split m (number of prefix scales). None: the paper's rule, the scales of a quarter-side "
            "image (m256 of 1024: 12 of NextFlow's 18 scales). 0: VMR off (plain GRPO)."
        },
    )
    vmr_num_continuations: int = field(
        default=2, metadata={"help": "VMR: continuations K sampled from every prefix to estimate its soft value."}
    )
    vmr_eta: float = field(default=1.0, metadata={"help": "VMR: temperature eta of the soft value."})
    vmr_prefix_updates: int = field(
        default=3, metadata={"help": "VMR: prefix updates per cycle of the alternation (optimizer updates)."}
    )
    vmr_suffix_updates: int = field(default=1, metadata={"help": "VMR: suffix updates per cycle."})
    vmr_suffix_grouping: str = field(
        default="shared_prefix",
        metadata={
            "help": "VMR: groups of a suffix update continue one shared prefix per prompt ('shared_prefix') or have "
            "independent prefixes ('independent').",
            "choices": ["shared_prefix", "independent"],
        },
    )
    panw_alpha: float = field(
        default=0.6,
        metadata={"help": "PANW: scale t's tokens weigh (h_t * w_t) ** -alpha. 0: plain token mean; paper: 0.6."},
    )
    mask_propagation: bool = field(
        default=True,
        metadata={"help": "MP: gate the loss with the reward regions (OCR boxes), propagated fine to coarse."},
    )
    mask_dilation: int = field(default=0, metadata={"help": "MP: grow the finest-grid mask by this many cells."})
    num_generations: int | None = field(
        default=16,
        metadata={"help": "Group size: images sampled per prompt. The paper uses 16."},
    )
    per_device_train_batch_size: int = field(
        default=16,
        metadata={"help": "Images per device per step; with the defaults, one full group of `num_generations`."},
    )
    learning_rate: float = field(
        default=1e-5,
        metadata={"help": "The initial learning rate for AdamW (paper: 1e-5)."},
    )
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2 (paper: 0.95)."})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay (paper: 0.05)."})
    log_completions: bool = field(
        default=True,
        metadata={
            "help": "Log a grid of sample images with prompts and rewards every `logging_steps` to the trackers of "
            "`report_to`, and save it under `output_dir/samples/`."
        },
    )

    def __post_init__(self):
        if self.bf16 is None:
            self.bf16 = not self.fp16 and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        if self.num_generations is not None and self.num_generations < 2:
            raise ValueError(
                f"`num_generations` is {self.num_generations}, but GRPO normalizes each image's reward against the "
                "other images of its prompt, so it needs at least 2 (the paper uses 16)."
            )
        super().__post_init__()
        if self.guidance_schedule not in ("constant", "linear"):
            raise ValueError(f"`guidance_schedule` must be 'constant' or 'linear', got {self.guidance_schedule!r}.")
        if self.guidance_scale <= 0:
            raise ValueError(f"`guidance_scale` must be > 0 (1.0 disables guidance), got {self.guidance_scale}.")
        if self.top_k < 0:
            raise ValueError(f"`top_k` must be >= 0 (0 disables top-k filtering), got {self.top_k}.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"`top_p` must be in (0, 1], got {self.top_p}.")
        if self.rollout_batch_size is not None and self.rollout_batch_size < 1:
            raise ValueError(
                f"`rollout_batch_size` must be >= 1 (or None: all rows at once), got {self.rollout_batch_size}."
            )
        if self.eval_guidance_scale is not None and self.eval_guidance_scale <= 0:
            raise ValueError(f"`eval_guidance_scale` must be > 0, got {self.eval_guidance_scale}.")
        if self.eval_top_k is not None and self.eval_top_k < 0:
            raise ValueError(f"`eval_top_k` must be >= 0, got {self.eval_top_k}.")
        if self.eval_top_p is not None and not 0 < self.eval_top_p <= 1:
            raise ValueError(f"`eval_top_p` must be in (0, 1], got {self.eval_top_p}.")
        # GRPOConfig options that do not apply to image rollouts: refuse them rather than ignore them silently
        unsupported = {
            "use_vllm": self.use_vllm,
            "pad_to_multiple_of": self.pad_to_multiple_of is not None,
            "mask_truncated_completions": self.mask_truncated_completions,
            "generation_kwargs": self.generation_kwargs is not None,
            "min_p": self.min_p is not None,
            "repetition_penalty": self.repetition_penalty != 1.0,
            # the loss weights (PANW x MP) ride in the completion mask, which TRL's entropy mask would misread
            "top_entropy_quantile": self.top_entropy_quantile < 1.0,
        }
        refused = [name for name, is_set in unsupported.items() if is_set]
        if refused:
            raise ValueError(
                f"{refused} do not apply to VAR image rollouts (every image has the same number of tokens, sampled "
                "scale by scale by the model's own `generate`); leave them at their defaults."
            )
        if self.vmr_prefix_scales is not None and self.vmr_prefix_scales < 0:
            raise ValueError(
                f"`vmr_prefix_scales` must be >= 0 (0 turns VMR off, None follows the paper), got "
                f"{self.vmr_prefix_scales}."
            )
        if self.vmr_num_continuations < 1:
            raise ValueError(f"`vmr_num_continuations` (K) must be >= 1, got {self.vmr_num_continuations}.")
        if self.vmr_eta <= 0:
            raise ValueError(f"`vmr_eta` must be > 0, got {self.vmr_eta}.")
        if (
            self.vmr_prefix_updates < 0
            or self.vmr_suffix_updates < 0
            or not (self.vmr_prefix_updates or self.vmr_suffix_updates)
        ):
            raise ValueError(
                f"`vmr_prefix_updates` ({self.vmr_prefix_updates}) and `vmr_suffix_updates` "
                f"({self.vmr_suffix_updates}) must be >= 0 and not both 0."
            )
        if self.vmr_suffix_grouping not in ("shared_prefix", "independent"):
            raise ValueError(
                f"`vmr_suffix_grouping` must be 'shared_prefix' or 'independent', got {self.vmr_suffix_grouping!r}."
            )
        if self.panw_alpha < 0:
            raise ValueError(f"`panw_alpha` must be >= 0 (0 turns PANW off), got {self.panw_alpha}.")
        if self.mask_dilation < 0:
            raise ValueError(f"`mask_dilation` must be >= 0, got {self.mask_dilation}.")

    def sampling_kwargs(self, evaluation: bool = False) -> dict:
        """
        The sampling arguments of the rollouts, all of `SAMPLING_ARGUMENTS`, as [`VARPipeline.__call__`] and the
        model's `generate` take them, or, with `evaluation=True`, of evaluation: `eval_guidance_scale`, `eval_top_k`
        and `eval_top_p` override their rollout counterparts where set. Training always passes all of them, so the
        model's `generation_config` does not change what it samples.

        Example: `score_prompts(pipeline, prompts, targets, **args.sampling_kwargs(evaluation=True))`.
        """
        sampling = {name: getattr(self, name) for name in SAMPLING_ARGUMENTS}
        if evaluation:
            overrides = {
                "guidance_scale": self.eval_guidance_scale,
                "top_k": self.eval_top_k,
                "top_p": self.eval_top_p,
            }
            sampling.update({name: value for name, value in overrides.items() if value is not None})
        return sampling
