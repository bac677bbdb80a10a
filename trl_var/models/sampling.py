"""
Sampling settings shared by every model family: their names, how a `generate` call resolves them against the
model's `generation_config`, the guidance schedule, the hooks that save and load `generation_config` with a model
whose `generate` is its own, and the read-only view of the KV cache that the last scale attends through.

The settings have one home: `model.generation_config`, saved with the model as generation_config.json, which
`generate` reads for every setting not given; the pipeline, the evaluation and the trainer forward them as
`**sampling`.
"""

import torch
from transformers import GenerationConfig
from transformers.cache_utils import DynamicCache


# The settings of `generate` that shape the sampling distribution, in the order every layer lists them.
SAMPLING_ARGUMENTS = ("guidance_scale", "guidance_schedule", "temperature", "top_k", "top_p")
GUIDANCE_SCHEDULES = ("constant", "linear")


def sampling_settings(generation_config: GenerationConfig, **given) -> dict:
    """
    The sampling settings of a `generate` call: every one of `SAMPLING_ARGUMENTS` given and not `None`, else the
    value of `generation_config` (the checkpoint's recommended decoding). `top_k` may stay `None` (no top-k).
    Evaluation records this dict, so that its results say how the images were sampled.

    The settings, for every model family:
        guidance_scale (`float`): classifier-free guidance `s` (1.0: off, and no unconditional branch is run).
        guidance_schedule (`str`): `"constant"` (`s` at every scale) or `"linear"` (see [`guidance_at`]).
        temperature (`float`): divides the logits, for sampling and for the returned log-probs.
        top_k (`int`): keep the `top_k` most likely values of every position (0 or `None`: all).
        top_p (`float`): nucleus sampling, keep the smallest set whose probability exceeds `top_p` (1.0: all).
    """
    unknown = sorted(set(given) - set(SAMPLING_ARGUMENTS))
    if unknown:
        raise TypeError(
            f"Unknown sampling argument(s) {unknown}; the sampling arguments are {list(SAMPLING_ARGUMENTS)}."
        )
    settings = {}
    for name in SAMPLING_ARGUMENTS:
        value = given.get(name)
        settings[name] = getattr(generation_config, name, None) if value is None else value
        if settings[name] is None and name != "top_k":
            raise ValueError(
                f"No `{name}` to sample with: pass `{name}=...`, or set `model.generation_config.{name}`."
            )
    if settings["guidance_schedule"] not in GUIDANCE_SCHEDULES:
        raise ValueError(
            f"`guidance_schedule` must be one of {list(GUIDANCE_SCHEDULES)}, got {settings['guidance_schedule']!r}."
        )
    if settings["temperature"] <= 0:
        raise ValueError(f"`temperature` must be > 0, got {settings['temperature']}.")
    return settings


def guidance_at(scale_index: int, num_scales: int, guidance_scale: float, guidance_schedule: str) -> float:
    """
    The guidance scale `s_t` of scale `t` of `T`: `s` at every scale (`"constant"`), or
    `s_t = 1 + (s - 1) * t / (T - 1)` (`"linear"`, VAR's schedule: the coarse scales, which fix the layout, stay
    diverse, and the fine scales follow the prompt).
    """
    if guidance_schedule == "linear":
        return 1.0 + (guidance_scale - 1.0) * scale_index / max(num_scales - 1, 1)
    return guidance_scale


class ReadOnlyCache:
    """
    A [`DynamicCache`] read through its `update` without being written: a layer's cached keys and values followed by
    the new ones. The last scale of `generate` attends through it, since no later pass reads that scale's keys and
    values; each layer's concatenation is freed after its attention, where the cache would keep all of them.
    """

    def __init__(self, cache: DynamicCache):
        self.cache = cache

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        layer = self.cache.layers[layer_idx]
        return torch.cat([layer.keys, key_states], dim=-2), torch.cat([layer.values, value_states], dim=-2)


class GenerationConfigHooks:
    """
    Mixin for a `PreTrainedModel` with its own `generate`: `save_pretrained` writes `generation_config` to
    generation_config.json and `from_pretrained` reads it back, as for transformers' generative models.
    """

    @classmethod
    def can_generate(cls) -> bool:
        # Sampling is the model's own `generate`, not `GenerationMixin`'s; saying True makes `save_pretrained` write
        # `generation_config` to generation_config.json and `from_pretrained` call `adjust_generation_fn`.
        return True

    def adjust_generation_fn(
        self, generation_config, from_auto_class, from_pipeline, pretrained_model_name_or_path, **download_kwargs
    ):
        """
        `from_pretrained`'s hook: the settings of the checkpoint's generation_config.json (or of the
        `generation_config` passed to `from_pretrained`) override the defaults of `__init__`; a checkpoint saved
        without one samples with those defaults.
        """
        if generation_config is None:
            download_kwargs.pop("trust_remote_code", None)
            try:
                generation_config = GenerationConfig.from_pretrained(pretrained_model_name_or_path, **download_kwargs)
            except OSError:
                return
        self.generation_config.update(allow_custom_entries=True, **generation_config.to_diff_dict())
