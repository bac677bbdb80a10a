"""
VAR-style text-to-image model, NextFlow-shaped: a decoder-only transformer reads the prompt, then predicts the image
scale by scale (next-scale prediction, Tian et al. 2024), every scale a whole grid of codebook tokens.

Sequence layout (one row of the batch):

    [ text tokens (left-padded) | scale 0 (h0*w0) | scale 1 (h1*w1) | ... | scale T-1 (h*w) ]

The input at scale 0 is a start block (position embeddings only); the input at scale t > 0 is the accumulated
quantized feature map `f_hat` of scales < t, area-resized to scale t's grid and projected to the hidden size (VAR's
teacher forcing), so the model sees everything decided so far at the resolution it must refine. Attention is causal
over text, every image token sees every text token, full inside a scale and causal across scales (block-causal).
The output at scale t's positions predicts the tokens of scale t.

Two forward paths that agree to float tolerance:
- `forward` / `image_token_logprobs`: teacher forcing, one pass over prompt + all scales;
- `generate`: sampling scale by scale with a KV cache, classifier-free guidance, temperature, top-k and top-p.

The sampling settings (`SAMPLING_ARGUMENTS`, see `sampling.py`) have one home: `model.generation_config`.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, GenerationConfig, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import DynamicCache
from transformers.utils import ModelOutput

from ..block_attention import BLOCK_CAUSAL_ATTENTION, BlockCausalLayout
from ..modeling_utils import FrozenSubmodulesMixin, ScaleScheduleMixin
from ..sampling import GenerationConfigHooks, ReadOnlyCache, guidance_at, sampling_settings
from .configuration_var import VARConfig
from .multiscale_vq import MultiScaleQuantizer, MultiScaleVQModel


@dataclass
class VARModelOutput(ModelOutput):
    """
    Args:
        logits (`torch.FloatTensor` of shape `(batch_size, num_image_tokens, codebook_size)`):
            Scores of the image head at every image position (scales concatenated, coarse to fine, row-major).
        hidden_states (`torch.FloatTensor` of shape `(batch_size, num_image_tokens, hidden_size)`):
            Last hidden states of the image positions.
    """

    logits: torch.FloatTensor | None = None
    hidden_states: torch.FloatTensor | None = None


@dataclass
class VARSamplingState:
    """
    Everything needed to continue sampling from the scale after the last one generated: the KV cache, the accumulated
    feature map and the tokens so far. `generate(..., num_scales=m)` returns one; `generate(state=...)` continues it.
    `repeat_interleave(k)` makes `k` continuations of every row that share the prefix without recomputing it.
    """

    cache: DynamicCache
    f_hat: torch.Tensor  # (B, C, H, W), the accumulated quantized features of the scales generated so far
    text_mask: torch.Tensor  # (B', P) attention mask of the text, B' = 2B with classifier-free guidance
    image_ids: list[torch.Tensor]  # one (B, h_t * w_t) tensor per generated scale
    logprobs: list[torch.Tensor]  # same shapes: log-probs of the conditional policy
    guided: bool

    @property
    def next_scale(self) -> int:
        return len(self.image_ids)

    def select_rows_(self, index: torch.LongTensor) -> "VARSamplingState":
        """
        In place: row `i` becomes a copy of row `index[i]` (rows may repeat), cache included, so that
        `generate(state=...)` continues several times from one prefix without recomputing it.
        """
        batch_size = self.f_hat.shape[0]
        index = index.to(self.f_hat.device)
        # with guidance the cache and the text mask hold [conditional rows; unconditional rows]
        cache_index = torch.cat([index, index + batch_size]) if self.guided else index
        self.cache.reorder_cache(cache_index)
        self.text_mask = self.text_mask[cache_index]
        self.f_hat = self.f_hat[index]
        self.image_ids = [ids[index] for ids in self.image_ids]
        self.logprobs = [lp[index] for lp in self.logprobs]
        return self

    def repeat_interleave_(self, repeats: int) -> "VARSamplingState":
        """In place: every row becomes `repeats` consecutive rows sharing its prefix (VMR's continuations)."""
        return self.select_rows_(torch.arange(self.f_hat.shape[0]).repeat_interleave(repeats))


@dataclass
class VARGenerationOutput(ModelOutput):
    """
    Args:
        image_ids (`torch.LongTensor` of shape `(batch_size, num_generated_tokens)`):
            The sampled tokens of every generated scale, concatenated coarse to fine, each scale row-major.
        logprobs (`torch.FloatTensor` of shape `(batch_size, num_generated_tokens)`):
            Log-probabilities of the sampled tokens under the conditional policy (no guidance, no top-k/top-p,
            logits divided by the temperature): the "old" log-probs of policy-gradient training.
        state ([`VARSamplingState`]):
            What `generate(state=...)` needs to continue from the next scale.
    """

    image_ids: torch.LongTensor | None = None
    logprobs: torch.FloatTensor | None = None
    state: VARSamplingState | None = None


class VARPreTrainedModel(ScaleScheduleMixin, FrozenSubmodulesMixin, GenerationConfigHooks, PreTrainedModel):
    _frozen_submodules = ("vqmodel",)
    config_class = VARConfig
    config: VARConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    # The backbone always runs trl-var's block-causal attention (`block_attention.py`): SDPA calls over each scale's
    # key prefix, which pick SDPA's fused kernels themselves. flash-attn and flex attention are not wired in.
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False

    def _init_weights(self, module):
        if isinstance(module, VARForImageGeneration):
            # Non-persistent buffers are not in the checkpoint: rebuild them whenever weights are initialized or loaded.
            for buffer, value in zip(module._image_layout_buffers(), _image_token_layout(module.config), strict=True):
                init.copy_(buffer, value)
        elif isinstance(module, MultiScaleQuantizer):
            init.zeros_(module.code_usage)
        # The tokenizer keeps the initialization of diffusers: its weights come from a trained checkpoint anyway.
        if isinstance(module, VARForImageGeneration) or not _is_part_of(module, getattr(self, "vqmodel", None)):
            super()._init_weights(module)


class VARForImageGeneration(VARPreTrainedModel):
    r"""
    Text-to-image transformer with next-scale prediction over the token grids of a [`MultiScaleVQModel`].

    Submodules: `model` (the text backbone built from `config.text_config`), `vqmodel` (the image tokenizer, frozen),
    `image_embed` (codebook features -> hidden), `scale_embed`, `row_embed`, `col_embed` (which scale, and where on the
    image: rows and columns of the finest grid, so every scale shares one 2D frame), `image_head` (hidden -> codebook
    logits).
    """

    def __init__(self, config: VARConfig):
        super().__init__(config)
        self.model = AutoModel.from_config(config.text_config)
        # the masks handed to the backbone are block layouts, not S x S tensors (see `block_attention.py`)
        self.model.set_attn_implementation(BLOCK_CAUSAL_ATTENTION)
        self.vqmodel = MultiScaleVQModel(**config.vq_config)
        hidden_size = config.text_config.hidden_size
        latent_h, latent_w = self.vqmodel.latent_size
        self.image_embed = nn.Linear(self.vqmodel.config.latent_channels, hidden_size)
        self.scale_embed = nn.Embedding(len(config.scale_schedule), hidden_size)
        self.row_embed = nn.Embedding(latent_h, hidden_size)
        self.col_embed = nn.Embedding(latent_w, hidden_size)
        self.image_head = nn.Linear(hidden_size, self.vqmodel.config.codebook_size, bias=False)

        # Which scale, finest-grid row and finest-grid column every image position belongs to.
        scale_index, rows, cols = _image_token_layout(config)
        self.register_buffer("image_scale_index", scale_index, persistent=False)
        self.register_buffer("image_row_index", rows, persistent=False)
        self.register_buffer("image_col_index", cols, persistent=False)

        self._no_split_modules = self.model._no_split_modules
        # The recommended sampling, which `generate` falls back to: VAR's and the paper's evaluation decoding. A
        # checkpoint's generation_config.json overrides it (`adjust_generation_fn`). TRL reads and writes the pad and
        # eos ids here. `do_sample` only keeps transformers' validation from refusing to save top-k / top-p.
        self.generation_config = GenerationConfig(
            do_sample=True,
            guidance_scale=5.0,
            guidance_schedule="constant",
            temperature=1.0,
            top_k=2,
            top_p=0.9,
            pad_token_id=config.text_config.pad_token_id,
            eos_token_id=config.text_config.eos_token_id,
        )
        self.post_init()
        self.freeze_submodules_()

    # ------------------------------------------------------------------ layout helpers

    def _image_layout_buffers(self):
        return self.image_scale_index, self.image_row_index, self.image_col_index

    def split_scales(self, image_ids: torch.Tensor) -> list[torch.Tensor]:
        """Flat `(B, n)` image tokens of the first scales (all by default) -> one `(B, h_t, w_t)` grid per scale."""
        num_scales = self.num_scales_in(image_ids.shape[1])
        grids = torch.split(image_ids, self.scale_token_counts[:num_scales], dim=1)
        return [g.reshape(g.shape[0], h, w) for g, (h, w) in zip(grids, self.scale_schedule, strict=False)]

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def get_output_embeddings(self):
        return self.image_head

    def _position_embeds(self, start: int, end: int) -> torch.Tensor:
        return (
            self.scale_embed(self.image_scale_index[start:end])
            + self.row_embed(self.image_row_index[start:end])
            + self.col_embed(self.image_col_index[start:end])
        )

    def _text_positions(self, text_mask: torch.Tensor) -> torch.Tensor:
        return (text_mask.long().cumsum(-1) - 1).clamp(min=0)

    def _image_positions(self, text_mask: torch.Tensor, scale_index: torch.Tensor) -> torch.Tensor:
        # One rotary position per scale: the 2D layout comes from the learned row/column embeddings, and the
        # rotary distance then counts "how many refinement steps ago", as the sequence of scales is the time axis.
        return text_mask.long().sum(-1, keepdim=True) + scale_index.unsqueeze(0)

    def _backbone(self, inputs_embeds, attention_mask: BlockCausalLayout, position_ids, cache=None):
        # A dict of prepared masks is passed through untouched by transformers' decoder models to the attention.
        masks = dict.fromkeys(set(self.model.config.layer_types), attention_mask)
        return self.model(
            inputs_embeds=inputs_embeds,
            attention_mask=masks,
            position_ids=position_ids,
            cache=cache,
            use_cache=cache is not None,
        ).last_hidden_state

    # ------------------------------------------------------------------ teacher forcing

    def forward(
        self,
        input_ids: torch.LongTensor,
        image_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> VARModelOutput:
        r"""
        Teacher-forced pass over the prompt and all scales at once.

        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, text_length)`):
                Prompt tokens, left-padded.
            image_ids (`torch.LongTensor` of shape `(batch_size, num_tokens)`):
                Image tokens, concatenated coarse to fine, each scale row-major: all scales, or the first few
                (whole) scales, in which case only their logits are computed (block-causality makes them the same).
            attention_mask (`torch.Tensor` of shape `(batch_size, text_length)`, *optional*):
                1 for prompt tokens, 0 for padding. Only the text part: image tokens are never padding.
        """
        grids = self.split_scales(image_ids)
        num_tokens = image_ids.shape[1]
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        batch_size, num_text = input_ids.shape
        text_embeds = self.model.get_input_embeddings()(input_ids)

        # Inputs of scale 0: the start block (zero feature); of scales 1..n-1: f_hat of the scales before, resized.
        start_block = self.image_embed.weight.new_zeros(
            batch_size, self.scale_token_counts[0], self.image_embed.in_features
        )
        if len(grids) > 1:
            with torch.no_grad():
                features = self.vqmodel.quantizer.teacher_forcing_inputs(grids)
            start_block = torch.cat([start_block, features.to(start_block.dtype)], 1)
        image_embeds = self.image_embed(start_block) + self._position_embeds(0, num_tokens)

        scale_index = self.image_scale_index[:num_tokens]
        mask = BlockCausalLayout.for_scales(self.scale_token_counts[: len(grids)], attention_mask)
        positions = torch.cat(
            [self._text_positions(attention_mask), self._image_positions(attention_mask, scale_index)], 1
        )
        hidden = self._backbone(torch.cat([text_embeds, image_embeds.to(text_embeds.dtype)], 1), mask, positions)
        hidden = hidden[:, num_text:]
        return VARModelOutput(logits=self.image_head(hidden), hidden_states=hidden)

    def image_token_logprobs(
        self,
        input_ids: torch.LongTensor,
        image_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        temperature: float = 1.0,
        compute_entropy: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """
        Log-probabilities `(B, L)` of the given image tokens under the conditional policy (logits divided by
        `temperature`), and optionally the entropy of every position's distribution, from one teacher-forced pass.
        """
        logits = self(input_ids=input_ids, image_ids=image_ids, attention_mask=attention_mask).logits
        return self.logprobs_from_logits(logits, image_ids, temperature, compute_entropy)

    @staticmethod
    def logprobs_from_logits(
        logits: torch.Tensor, image_ids: torch.LongTensor, temperature: float = 1.0, compute_entropy: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """
        The log-probabilities `(B, L)` of `image_ids` and optionally the entropies from the image head's `logits`
        `(B, L, codebook_size)`: a softmax over the codebook at `temperature`, in float32 (a bf16 log-softmax over
        thousands of codes would bias every token of an image).
        """
        # as `logsumexp` and one softmax, so that autograd keeps one (B, L, V) tensor besides the logits, not three
        logits = logits.float() / temperature
        normalizer = logits.logsumexp(-1)
        token_logprobs = logits.gather(-1, image_ids.unsqueeze(-1)).squeeze(-1) - normalizer
        entropy = normalizer - (logits.softmax(-1) * logits).sum(-1) if compute_entropy else None
        return token_logprobs, entropy

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        num_scales: int | None = None,
        state: VARSamplingState | None = None,
        generator: torch.Generator | None = None,
        **sampling,
    ) -> VARGenerationOutput:
        r"""
        Sample image tokens scale by scale with a KV cache. Every sampling argument not given (`None`) takes the value
        of `self.generation_config`, the checkpoint's recommended decoding (by default VAR's and the paper's: guidance
        5, constant schedule, temperature 1, top-k 2, top-p 0.9).

        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, text_length)`):
                Prompt tokens, left-padded. Not needed when continuing from `state`.
            attention_mask (`torch.Tensor` of shape `(batch_size, text_length)`, *optional*):
                1 for prompt tokens, 0 for padding.
            generator (`torch.Generator`, *optional*):
                Source of randomness, for reproducible samples.
            num_scales (`int`, *optional*):
                Stop after this many scales in total (counting those already in `state`); default: all.
            state ([`VARSamplingState`], *optional*):
                Continue from a previous call's `state` instead of starting from the prompt. The state is advanced in
                place; call `state.repeat_interleave_(k)` first to branch `k` continuations off every row.
            sampling:
                `guidance_scale`, `guidance_schedule`, `temperature`, `top_k`, `top_p` (see
                [`~trl_var.models.sampling.sampling_settings`]); guidance mixes `uncond + s * (cond - uncond)`, the
                unconditional branch reading an empty prompt; `top_k` keeps the most likely codes of every position.

        Returns:
            [`VARGenerationOutput`] with the tokens and log-probs of the scales generated so far (including those of
            `state`) and the state to continue from.
        """
        # 1. The sampling settings: the arguments given, else the generation config's.
        sampling = sampling_settings(self.generation_config, **sampling)
        guided = sampling["guidance_scale"] != 1.0
        num_total = len(self.scale_schedule)
        num_scales = num_total if num_scales is None else num_scales
        if not 1 <= num_scales <= num_total:
            raise ValueError(f"`num_scales` must be in [1, {num_total}], got {num_scales}.")

        # 2. Start from the prompt (an empty cache), or continue a state.
        if state is None:
            if input_ids is None:
                raise ValueError("`generate` needs `input_ids` (the prompt) or a `state` to continue from.")
            state = self._start_sampling(input_ids, attention_mask, guided=guided)
        elif state.guided != guided:
            raise ValueError("Continue a sampling `state` with the guidance it was started with.")

        # 3. One forward pass per scale; the first one also prefills the prompt.
        batch_size = state.f_hat.shape[0]
        for t in range(state.next_scale, num_scales):
            # 3a. Logits of scale t's positions: rows [0, B) read the prompt, rows [B, 2B) (guided) the empty prompt.
            # The last scale's keys and values are never read again: it attends over the cache without storing them.
            embeds, mask, positions = self._scale_inputs(state, t, input_ids)
            cache = ReadOnlyCache(state.cache) if 0 < t == num_total - 1 else state.cache
            hidden = self._backbone(embeds, mask, positions, cache=cache)[:, -self.scale_token_counts[t] :]
            logits = self.image_head(hidden).float()

            # 3b. Classifier-free guidance.
            cond_logits = logits[:batch_size]
            if state.guided:
                scale = guidance_at(t, num_total, sampling["guidance_scale"], sampling["guidance_schedule"])
                sample_logits = logits[batch_size:] + scale * (cond_logits - logits[batch_size:])
            else:
                sample_logits = cond_logits

            # 3c. Sample from the guided, filtered distribution; score under the conditional, unfiltered one (the
            # policy that training optimizes), without materializing a second full log-softmax.
            ids = _sample(sample_logits / sampling["temperature"], sampling["top_k"], sampling["top_p"], generator)
            cond_logits = cond_logits / sampling["temperature"]
            logprobs = cond_logits.gather(-1, ids.unsqueeze(-1)).squeeze(-1) - cond_logits.logsumexp(-1)

            # 3d. Add the scale to the accumulated feature map, the next scale's input.
            h, w = self.scale_schedule[t]
            state.f_hat = self.vqmodel.quantizer.add_scale(state.f_hat, ids.reshape(batch_size, h, w), t)
            state.image_ids.append(ids)
            state.logprobs.append(logprobs)

        return VARGenerationOutput(
            image_ids=torch.cat(state.image_ids, 1), logprobs=torch.cat(state.logprobs, 1), state=state
        )

    def _scale_inputs(
        self, state: VARSamplingState, t: int, input_ids: torch.LongTensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        Embeddings, block-causal layout and rotary positions of `generate`'s pass at scale `t`: scale `t`'s tokens, at
        `t = 0` preceded by the prompt `input_ids` (the prefill). Rows are doubled with guidance.
        """
        start = sum(self.scale_token_counts[:t])
        end = start + self.scale_token_counts[t]
        batch_size, num_text = state.f_hat.shape[0], state.text_mask.shape[1]
        if t == 0:  # the start block: position embeddings only
            features = state.f_hat.new_zeros(batch_size, end - start, state.f_hat.shape[1])
        else:  # VAR's input: the feature map decided so far, resized to scale t's grid
            features = self.vqmodel.quantizer.next_scale_input(state.f_hat, t - 1)
        embeds = self.image_embed(features.to(self.image_embed.weight.dtype)) + self._position_embeds(start, end)
        if state.guided:  # the unconditional rows see the same image; only their text is masked out
            embeds = torch.cat([embeds, embeds])
        positions = self._image_positions(state.text_mask, self.image_scale_index[start:end])

        if t > 0:  # every cached key precedes scale t: only the text's padding is masked
            mask = BlockCausalLayout.for_scales(self.scale_token_counts[: t + 1], state.text_mask, num_text + start)
            return embeds, mask, positions

        # Prefill: the prompt and scale 0 in one pass, causal over the text, full inside the scale.
        text_embeds = self.model.get_input_embeddings()(input_ids)
        if state.guided:
            text_embeds = torch.cat([text_embeds, text_embeds])
        embeds = torch.cat([text_embeds, embeds.to(text_embeds.dtype)], 1)
        mask = BlockCausalLayout.for_scales(self.scale_token_counts[:1], state.text_mask)
        positions = torch.cat([self._text_positions(state.text_mask), positions], 1)
        return embeds, mask, positions

    def _start_sampling(self, input_ids, attention_mask, guided: bool) -> VARSamplingState:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        text_mask = attention_mask
        if guided:  # unconditional rows: the same positions, all text masked out (the empty prompt)
            text_mask = torch.cat([attention_mask, torch.zeros_like(attention_mask)])
        quantizer = self.vqmodel.quantizer
        f_hat = torch.zeros(
            input_ids.shape[0],
            quantizer.codebook.weight.shape[1],
            *quantizer.latent_size,
            device=input_ids.device,
            dtype=quantizer.codebook.weight.dtype,
        )
        return VARSamplingState(
            cache=DynamicCache(config=self.config.text_config),
            f_hat=f_hat,
            text_mask=text_mask,
            image_ids=[],
            logprobs=[],
            guided=guided,
        )

    @torch.no_grad()
    def decode_image_tokens(self, image_ids: torch.LongTensor) -> torch.Tensor:
        """Flat `(B, L)` image tokens -> images `(B, 3, H, W)` in [-1, 1]."""
        images = self.vqmodel.decode(self.split_scales(image_ids))
        return images.clamp(-1, 1)


def _image_token_layout(config: VARConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scale index, finest-grid row and finest-grid column of every image position (cell centres, row-major)."""
    latent_h, latent_w = config.scale_schedule[-1]
    scale_index, rows, cols = [], [], []
    for t, (h, w) in enumerate(config.scale_schedule):
        scale_index.append(torch.full((h * w,), t))
        rows.append(((torch.arange(h) + 0.5) * latent_h / h).long().repeat_interleave(w))
        cols.append(((torch.arange(w) + 0.5) * latent_w / w).long().repeat(h))
    return torch.cat(scale_index), torch.cat(rows), torch.cat(cols)


def _is_part_of(module: nn.Module, parent: nn.Module | None) -> bool:
    return parent is not None and any(module is child for child in parent.modules())


def _sample(logits: torch.Tensor, top_k: int | None, top_p: float, generator: torch.Generator | None) -> torch.Tensor:
    """
    Sample one token per position from `logits` `(..., V)` restricted to the top-k, then to the nucleus of mass
    `top_p` of what is left (always keeping the best). With top-k, only the `k` candidates are sorted and softmaxed,
    not the codebook (16k entries at NextFlow's 4,096 positions of the last scale).
    """
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        values, candidates = logits.topk(top_k, dim=-1)  # sorted, best first
    else:
        values, candidates = logits.sort(dim=-1, descending=True)
    if top_p < 1.0:
        probs = values.softmax(-1)
        outside = probs.cumsum(-1) - probs >= top_p  # the mass before this token already reaches top_p
        outside[..., 0] = False
        values = values.masked_fill(outside, float("-inf"))
    choice = torch.multinomial(values.softmax(-1).flatten(0, -2), 1, generator=generator)
    return candidates.gather(-1, choice.view(*values.shape[:-1], 1)).squeeze(-1)
