from dataclasses import dataclass, field

import torch
from trl import GRPOConfig


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
