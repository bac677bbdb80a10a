"""
Infinity (Han et al. 2024, "Infinity: Scaling Bitwise AutoRegressive Modeling for High-Resolution Image Synthesis",
arXiv 2412.04431) as a trl-var policy: FoundationVision's released transformer, re-implemented in plain PyTorch so it
runs anywhere (the original needs flash-attn kernels) and loads the released weights under their own names.

Sequence layout of one image; the prompt is not in the sequence, it enters through cross-attention and AdaLN:

    [ scale 0: the start token (1x1) | scale 1 (h1*w1) | ... | scale T-1 (h*w) ]

Every token is a vector of `d` bits, predicted by `d` independent two-way classifiers (the bitwise head). Its id is
`sum_j bit_j << j`, bit `j` being classifier `j`, and

    log p(token) = sum_j log_softmax(logits_j / temperature)[bit_j],    H(token) = sum_j H(bit_j).

Text: the frozen T5 encoder's features -> RMSNorm (`text_norm`); attention pooling with one learned query
(`text_proj_for_sos`) gives the condition `c`; the start token is `c + pos_start`; a two-layer MLP
(`text_proj_for_ca`) gives the keys and values of the cross-attention of every block. Classifier-free guidance
replaces the features of each prompt by the first rows of the learned null text `cfg_uncond` and mixes the logits
as `s * cond + (1 - s) * uncond`.

Block (AdaLN, `(gamma1, gamma2, scale1, scale2, shift1, shift2) = ada_gss + shared_ada_lin(c)`, LN without affine):

    x = x + gamma1 * SelfAttention(LN(x) * (1 + scale1) + shift1)      # cosine attention, 2D RoPE, block-causal
    x = x + CrossAttention(ca_norm(x), text)                            # not modulated, not gated
    x = x + gamma2 * FFN(LN(x) * (1 + scale2) + shift2)                 # GELU (tanh)

Input of scale t > 0: the codes `(2 * bit - 1) / sqrt(d)` of every earlier scale, upsampled (bilinear) to the last
grid and summed, resized (bilinear) to scale t's grid, then `word_embed`. The same sum over all scales is what the
BSQ-VAE decoder turns into pixels. A level embedding of the scale index is added before the first block.

Two forward paths that agree to float tolerance:
- `forward` / `image_token_logprobs`: teacher forcing, one pass over all scales (or a prefix of whole scales);
- `generate`: sampling scale by scale with a KV cache, classifier-free guidance, temperature, top-k and top-p per bit.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationConfig, PreTrainedModel, T5EncoderModel
from transformers import initialization as init
from transformers.cache_utils import DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput

from ..block_attention import BlockCausalLayout, block_causal_attention
from ..modeling_utils import FrozenSubmodulesMixin, ScaleScheduleMixin
from ..sampling import GenerationConfigHooks, ReadOnlyCache, guidance_at, sampling_settings
from .bsq_vae import InfinityVAEDecoder
from .configuration_infinity import InfinityConfig


@dataclass
class InfinityModelOutput(ModelOutput):
    """
    Args:
        logits (`torch.FloatTensor` of shape `(batch_size, num_image_tokens, codebook_dim, 2)`):
            Scores of the two values of every bit of every image position (scales concatenated, coarse to fine).
        hidden_states (`torch.FloatTensor` of shape `(batch_size, num_image_tokens, hidden_size)`):
            Last hidden states of the image positions.
    """

    logits: torch.FloatTensor | None = None
    hidden_states: torch.FloatTensor | None = None


@dataclass
class InfinitySamplingState:
    """
    Everything needed to continue sampling from the scale after the last one generated: the KV cache, the summed codes
    and the prepared text. `generate(..., num_scales=m)` returns one; `generate(state=...)` continues it.
    """

    cache: DynamicCache
    summed_codes: torch.Tensor  # (B, d, H, W), float32: codes of the scales so far, upsampled to the last grid
    condition: torch.Tensor  # (B', C) pooled text, B' = 2B with classifier-free guidance
    text_states: torch.Tensor  # (B', P, C) keys/values input of the cross-attention
    text_mask: torch.Tensor  # (B', P)
    image_ids: list[torch.Tensor]  # one (B, h_t * w_t) tensor per generated scale
    logprobs: list[torch.Tensor]  # same shapes: log-probs of the conditional policy
    guided: bool

    @property
    def next_scale(self) -> int:
        return len(self.image_ids)

    def select_rows_(self, index: torch.LongTensor) -> "InfinitySamplingState":
        """In place: row `i` becomes a copy of row `index[i]` (rows may repeat), cache included."""
        batch_size = self.summed_codes.shape[0]
        index = index.to(self.summed_codes.device)
        # with guidance the cache and the text hold [conditional rows; unconditional rows]
        both = torch.cat([index, index + batch_size]) if self.guided else index
        self.cache.reorder_cache(both)
        self.condition, self.text_states, self.text_mask = (
            self.condition[both],
            self.text_states[both],
            self.text_mask[both],
        )
        self.summed_codes = self.summed_codes[index]
        self.image_ids = [ids[index] for ids in self.image_ids]
        self.logprobs = [lp[index] for lp in self.logprobs]
        return self

    def repeat_interleave_(self, repeats: int) -> "InfinitySamplingState":
        """In place: every row becomes `repeats` consecutive rows sharing its prefix (VMR's continuations)."""
        return self.select_rows_(torch.arange(self.summed_codes.shape[0]).repeat_interleave(repeats))


@dataclass
class InfinityGenerationOutput(ModelOutput):
    """
    Args:
        image_ids (`torch.LongTensor` of shape `(batch_size, num_generated_tokens)`):
            The sampled tokens of every generated scale, coarse to fine, each scale row-major; id = `sum_j bit_j << j`.
        logprobs (`torch.FloatTensor` of shape `(batch_size, num_generated_tokens)`):
            Log-probabilities of the sampled tokens under the conditional policy (no guidance, no top-k/top-p, logits
            divided by the temperature): the "old" log-probs of policy-gradient training.
        state ([`InfinitySamplingState`]):
            What `generate(state=...)` needs to continue from the next scale.
    """

    image_ids: torch.LongTensor | None = None
    logprobs: torch.FloatTensor | None = None
    state: InfinitySamplingState | None = None


# ---------------------------------------------------------------------------------------------------- layers


class InfinityRMSNorm(nn.Module):
    """`x / sqrt(mean(x^2) + eps) * weight`, computed in float32."""

    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()).to(x.dtype)


def rotate_2d(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """
    Rotary embedding on interleaved pairs: `(x[2i], x[2i+1])` turns by the angle of pair `i` (`cos`, `sin` of shape
    `(L, head_dim / 2)`, broadcast over batch and heads of `x` `(B, H, L, head_dim)`).
    """
    pairs = x.unflatten(-1, (-1, 2))
    x0, x1 = pairs[..., 0], pairs[..., 1]
    return torch.stack([cos * x0 - sin * x1, sin * x0 + cos * x1], -1).flatten(-2)


class InfinitySelfAttention(nn.Module):
    """
    Cosine self-attention: `q` and `k` are L2-normalized, `q` scaled by a learned per-head `exp(scale_mul_1H11)`
    (at most `max_attention_scale`), softmax scale 1; 2D RoPE on the normalized `q` and `k`. Biases on `q` and `v` only.
    """

    def __init__(self, config: InfinityConfig):
        super().__init__()
        hidden = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = hidden // self.num_heads
        self.mat_qkv = nn.Linear(hidden, 3 * hidden, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(hidden))
        self.v_bias = nn.Parameter(torch.zeros(hidden))
        self.scale_mul_1H11 = nn.Parameter(torch.full((1, self.num_heads, 1, 1), math.log(4.0)))
        self.proj = nn.Linear(hidden, hidden)
        self.max_log_scale = math.log(config.max_attention_scale)

    def forward(self, x, cos, sin, attention_mask=None, cache=None, layer_idx=0):
        batch_size, length, hidden = x.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        qkv = F.linear(x, self.mat_qkv.weight, bias).view(batch_size, length, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, L, c) each
        q = F.normalize(q, dim=-1) * self.scale_mul_1H11.clamp_max(self.max_log_scale).exp()
        k = F.normalize(k, dim=-1)
        q, k = rotate_2d(q, cos, sin).to(v.dtype), rotate_2d(k, cos, sin).to(v.dtype)
        if cache is not None:
            k, v = cache.update(k, v, layer_idx)
        if attention_mask is None:  # sampling: every cached key belongs to an earlier scale
            out = F.scaled_dot_product_attention(q, k, v, scale=1.0)
        else:
            out = block_causal_attention(q, k, v, attention_mask, scale=1.0)
        return self.proj(out.transpose(1, 2).reshape(batch_size, length, hidden))


class InfinityCrossAttention(nn.Module):
    """
    Attention of queries on the valid text tokens of their own prompt, scale `1 / sqrt(head_dim)`, biases on `q` and
    `v` only. With `learned_query`, the query is one learned vector per head (`mat_q`): attention pooling of the
    text into one vector per prompt.
    """

    def __init__(self, hidden_size: int, text_size: int, num_heads: int, learned_query: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        if learned_query:
            self.mat_q = nn.Parameter(torch.zeros(1, num_heads, self.head_dim))
        else:
            self.mat_q = nn.Linear(hidden_size, hidden_size)
        self.mat_kv = nn.Linear(text_size, 2 * hidden_size, bias=False)
        self.v_bias = nn.Parameter(torch.zeros(hidden_size))
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor | None, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        batch_size, text_length = text_mask.shape
        bias = torch.cat([torch.zeros_like(self.v_bias), self.v_bias])
        kv = F.linear(text, self.mat_kv.weight, bias).view(batch_size, text_length, 2, self.num_heads, self.head_dim)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
        if x is None:  # pooling: (1, H, c) -> (B, H, 1, c)
            q = self.mat_q.unsqueeze(2).expand(batch_size, -1, -1, -1).to(v.dtype)
        else:
            q = self.mat_q(x).view(batch_size, -1, self.num_heads, self.head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=text_mask.bool()[:, None, None, :])
        return self.proj(out.transpose(1, 2).flatten(2))


class InfinityTextPool(nn.Module):
    """Attention pooling of the normalized T5 features into the condition `(B, C)` (start token and AdaLN input)."""

    def __init__(self, config: InfinityConfig):
        super().__init__()
        self.ca = InfinityCrossAttention(
            config.hidden_size, config.text_hidden_size, config.text_pool_num_heads, learned_query=True
        )

    def forward(self, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        return self.ca(None, text, text_mask).squeeze(1)


class InfinityFeedForward(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(intermediate_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class InfinityBlock(GradientCheckpointingLayer):
    """AdaLN-modulated self-attention, plain cross-attention on the text, AdaLN-modulated feed-forward."""

    def __init__(self, config: InfinityConfig):
        super().__init__()
        hidden = config.hidden_size
        self.eps = config.norm_eps
        self.sa = InfinitySelfAttention(config)
        self.ca = InfinityCrossAttention(hidden, hidden, config.num_attention_heads)
        self.ffn = InfinityFeedForward(hidden, config.intermediate_size)
        self.ca_norm = nn.LayerNorm(hidden, eps=config.norm_eps)
        self.ada_gss = nn.Parameter(torch.zeros(1, 1, 6, hidden))  # gamma1, gamma2, scale1, scale2, shift1, shift2

    def forward(self, x, adaln, text_states, text_mask, cos, sin, attention_mask=None, cache=None, layer_idx=0):
        gamma1, gamma2, scale1, scale2, shift1, shift2 = (self.ada_gss + adaln).unbind(2)  # (B, 1, C) each
        normed = F.layer_norm(x, x.shape[-1:], eps=self.eps) * (1 + scale1) + shift1
        x = x + self.sa(normed, cos, sin, attention_mask, cache, layer_idx) * gamma1
        x = x + self.ca(self.ca_norm(x), text_states, text_mask)
        normed = F.layer_norm(x, x.shape[-1:], eps=self.eps) * (1 + scale2) + shift2
        return x + self.ffn(normed) * gamma2


class InfinityBlockChunk(nn.Module):
    """A group of consecutive blocks; it only mirrors the original checkpoints' `block_chunks.{c}.module.{j}` names."""

    def __init__(self, blocks: list[InfinityBlock]):
        super().__init__()
        self.module = nn.ModuleList(blocks)


class InfinityHeadNorm(nn.Module):
    """`LN(x) * (1 + scale) + shift`, `(scale, shift)` from the condition (no gate)."""

    def __init__(self, config: InfinityConfig):
        super().__init__()
        self.eps = config.norm_eps
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(config.hidden_size, 2 * config.hidden_size))

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ada_lin(condition).view(-1, 1, 2, x.shape[-1]).unbind(2)
        return F.layer_norm(x, x.shape[-1:], eps=self.eps) * (1 + scale) + shift


# ---------------------------------------------------------------------------------------------------- layout


def image_token_layout(config: InfinityConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    The scale of every image position and the `cos`, `sin` `(num_image_tokens, head_dim / 2)` of its 2D rotary angles.

    Row `i` of an `h`-row scale sits at `round(i * H / h)` on the `rope_grid_size` grid `(H, W)` (likewise columns);
    the first `head_dim / 4` pairs turn by the row, the others by the column, pair `k` of an axis at frequency
    `rope_theta ** (-4k / head_dim)`.
    """
    head_dim = config.hidden_size // config.num_attention_heads
    half = head_dim // 2
    inv_freq = 1.0 / config.rope_theta ** (torch.arange(0, half, 2, dtype=torch.int64).float() / half)
    grid_h, grid_w = config.rope_grid_size
    scale_index, angles = [], []
    for t, (h, w) in enumerate(config.scale_schedule):
        scale_index.append(torch.full((h * w,), t))
        rows = (torch.arange(h) * (grid_h / h)).round()  # float32, half to even, as the original
        cols = (torch.arange(w) * (grid_w / w)).round()
        row_angles = (rows[:, None] * inv_freq)[:, None, :].expand(h, w, -1)
        col_angles = (cols[:, None] * inv_freq)[None, :, :].expand(h, w, -1)
        angles.append(torch.cat([row_angles, col_angles], -1).reshape(h * w, half))
    angles = torch.cat(angles)
    return torch.cat(scale_index), angles.cos(), angles.sin()


def null_text_init(text_max_length: int, text_hidden_size: int) -> torch.Tensor:
    """The original's initial `cfg_uncond`: truncated normal (std 1.2, cut at +-2, seed 0) / sqrt(text_hidden_size)."""
    null_text = torch.empty(text_max_length, text_hidden_size)
    nn.init.trunc_normal_(null_text, std=1.2, generator=torch.Generator().manual_seed(0))
    return null_text / text_hidden_size**0.5


def bits_to_ids(bits: torch.Tensor) -> torch.LongTensor:
    """`(..., d)` bits -> `(...)` int64 ids, `sum_j bit_j << j`."""
    shifts = torch.arange(bits.shape[-1], device=bits.device)
    return (bits.long() << shifts).sum(-1)


def ids_to_bits(ids: torch.LongTensor, codebook_dim: int) -> torch.LongTensor:
    """`(...)` int64 ids -> `(..., d)` bits (0 or 1), bit `j` = `(id >> j) & 1`."""
    shifts = torch.arange(codebook_dim, device=ids.device)
    return (ids.unsqueeze(-1) >> shifts) & 1


def bits_to_codes(bits: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """`(B, h*w, d)` bits of one scale -> `(B, d, h, w)` BSQ codes `(2 * bit - 1) / sqrt(d)` in float32."""
    codes = (2 * bits.float() - 1) / bits.shape[-1] ** 0.5
    return codes.transpose(1, 2).reshape(bits.shape[0], -1, height, width)


# ---------------------------------------------------------------------------------------------------- model


class InfinityPreTrainedModel(ScaleScheduleMixin, FrozenSubmodulesMixin, GenerationConfigHooks, PreTrainedModel):
    _frozen_submodules = ("text_encoder", "vae_decoder")
    config_class = InfinityConfig
    config: InfinityConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["InfinityBlock", "T5Block"]

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, InfinityForImageGeneration):
            # Non-persistent buffers are not in the checkpoint: rebuild them whenever weights are initialized or loaded.
            for buffer, value in zip(module._layout_buffers(), image_token_layout(module.config), strict=True):
                init.copy_(buffer, value)
            init.normal_(module.pos_start, std=std)
            init.copy_(module.cfg_uncond, null_text_init(*module.cfg_uncond.shape))
        elif isinstance(module, InfinitySelfAttention):
            init.zeros_(module.q_bias)
            init.zeros_(module.v_bias)
            init.constant_(module.scale_mul_1H11, math.log(4.0))
        elif isinstance(module, InfinityCrossAttention):
            init.zeros_(module.v_bias)
            if isinstance(module.mat_q, nn.Parameter):
                init.normal_(module.mat_q, std=std)
        elif isinstance(module, InfinityBlock):
            init.normal_(module.ada_gss, std=std)
        elif isinstance(module, InfinityRMSNorm):
            init.ones_(module.weight)
        else:
            super()._init_weights(module)


class InfinityForImageGeneration(InfinityPreTrainedModel):
    r"""
    Infinity text-to-image transformer with bitwise next-scale prediction, its frozen T5 text encoder
    (`text_encoder`, whose token ids are `input_ids`) and its frozen BSQ-VAE decoder (`vae_decoder`).

    Parameter names are the original's (`block_chunks.{c}.module.{j}.sa.mat_qkv.weight`, `ca.mat_kv`, `ada_gss`,
    `shared_ada_lin`, `head_nm`, `head`, `word_embed`, `lvl_embed`, `pos_start`, `text_proj_for_sos`,
    `text_proj_for_ca`, `text_norm`, `cfg_uncond`), so a released checkpoint maps one to one
    ([`convert_infinity_checkpoint`]).
    """

    def __init__(self, config: InfinityConfig):
        super().__init__(config)
        hidden, text_hidden = config.hidden_size, config.text_hidden_size
        self.text_encoder = T5EncoderModel(config.text_config)
        self.cfg_uncond = nn.Parameter(torch.zeros(config.text_max_length, text_hidden))
        self.text_norm = InfinityRMSNorm(text_hidden, config.norm_eps)
        self.text_proj_for_sos = InfinityTextPool(config)
        self.text_proj_for_ca = nn.Sequential(
            nn.Linear(text_hidden, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, hidden)
        )
        self.pos_start = nn.Parameter(torch.zeros(1, 1, hidden))
        self.lvl_embed = nn.Embedding(config.num_level_embeddings, hidden)
        self.word_embed = nn.Linear(config.codebook_dim, hidden)
        self.shared_ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))
        per_chunk = config.num_hidden_layers // config.num_block_chunks
        self.block_chunks = nn.ModuleList(
            InfinityBlockChunk([InfinityBlock(config) for _ in range(per_chunk)])
            for _ in range(config.num_block_chunks)
        )
        self.head_nm = InfinityHeadNorm(config)
        self.head = nn.Linear(hidden, 2 * config.codebook_dim)
        self.vae_decoder = InfinityVAEDecoder(**config.vae_config)

        scale_index, rope_cos, rope_sin = image_token_layout(config)
        self.register_buffer("image_scale_index", scale_index, persistent=False)
        self.register_buffer("rope_cos", rope_cos, persistent=False)
        self.register_buffer("rope_sin", rope_sin, persistent=False)

        # The sampling defaults `generate` falls back on. The released sampler truncates each bit with top_p 0.97.
        text_config = config.text_config
        self.generation_config = GenerationConfig(
            do_sample=True,
            guidance_scale=3.0,
            guidance_schedule="constant",
            temperature=1.0,
            top_k=0,
            top_p=0.97,
            pad_token_id=text_config.pad_token_id,
            eos_token_id=text_config.eos_token_id,
        )
        self.post_init()
        self.freeze_submodules_()

    def train(self, mode: bool = True):
        # The text encoder is frozen: its dropout stays off, so log-probs are the same in training and in sampling.
        super().train(mode)
        self.text_encoder.eval()
        return self

    # ------------------------------------------------------------------ layout helpers

    def _layout_buffers(self):
        return self.image_scale_index, self.rope_cos, self.rope_sin

    @property
    def blocks(self) -> list[InfinityBlock]:
        return [block for chunk in self.block_chunks for block in chunk.module]

    def get_input_embeddings(self):
        # the input layer of the generated tokens (their codes -> hidden); T5's embeddings belong to the frozen encoder
        # and are tied inside it, so they must not be carved out on their own (FSDP would see the weight twice)
        return self.word_embed

    def get_output_embeddings(self):
        return self.head

    # ------------------------------------------------------------------ shared pieces

    def _encode_text(self, input_ids, attention_mask, guided: bool):
        """T5 features (the null text for the unconditional rows) -> condition `(B', C)`, cross-attention input."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        with torch.no_grad():
            # the G rollouts of a group share their prompt: the frozen encoder reads every distinct prompt once
            rows, inverse = torch.unique(torch.cat([input_ids, attention_mask.long()], 1), dim=0, return_inverse=True)
            if len(rows) < len(input_ids):
                unique_ids, unique_mask = rows.split(input_ids.shape[1], dim=1)
                features = self.text_encoder(input_ids=unique_ids, attention_mask=unique_mask).last_hidden_state
                features = features[inverse]
            else:
                features = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        features = features.to(self.cfg_uncond.dtype)
        if guided:
            features = torch.cat([features, self._null_text(attention_mask)])
            attention_mask = torch.cat([attention_mask, attention_mask])
        text = self.text_norm(features)
        return self.text_proj_for_sos(text, attention_mask), self.text_proj_for_ca(text), attention_mask

    def _null_text(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """The k-th valid token of every prompt gets row k of `cfg_uncond` (padding: row 0, masked anyway)."""
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        if int(positions.max()) >= self.cfg_uncond.shape[0]:
            raise ValueError(
                f"A prompt of {int(positions.max()) + 1} tokens is longer than the null text of classifier-free "
                f"guidance (`text_max_length` = {self.cfg_uncond.shape[0]})."
            )
        return self.cfg_uncond[positions]

    def _run_blocks(self, x, condition, text_states, text_mask, start, end, attention_mask=None, cache=None):
        adaln = self.shared_ada_lin(condition).view(condition.shape[0], 1, 6, -1)
        cos, sin = self.rope_cos[start:end], self.rope_sin[start:end]
        for layer_idx, block in enumerate(self.blocks):
            x = block(x, adaln, text_states, text_mask, cos, sin, attention_mask, cache=cache, layer_idx=layer_idx)
        return x

    def _bit_logits(self, hidden: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.head_nm(hidden, condition))
        return logits.view(*logits.shape[:-1], self.config.codebook_dim, 2)

    def _upsample_to_last(self, codes: torch.Tensor) -> torch.Tensor:
        return F.interpolate(codes, size=self.scale_schedule[-1], mode="bilinear", align_corners=False)

    def _scale_input(self, summed_codes: torch.Tensor, t: int) -> torch.Tensor:
        """Input of scale `t`: the summed codes resized to its grid, flattened row-major, `(B, h*w, d)`."""
        resized = F.interpolate(summed_codes, size=self.scale_schedule[t], mode="bilinear", align_corners=False)
        return resized.flatten(2).transpose(1, 2)

    def image_ids_to_summed_codes(self, image_ids: torch.LongTensor) -> list[torch.Tensor]:
        """
        Flat `(B, n)` tokens of the first scales -> the summed codes after each of them `(B, d, H, W)` (float32): the
        running sum of every scale's codes upsampled to the last grid; the last one is what the VAE decodes.
        """
        bits = ids_to_bits(image_ids, self.config.codebook_dim)
        summed, sums, offset = 0, [], 0
        for h, w in self.scale_schedule[: self.num_scales_in(image_ids.shape[1])]:
            summed = summed + self._upsample_to_last(bits_to_codes(bits[:, offset : offset + h * w], h, w))
            sums.append(summed)
            offset += h * w
        return sums

    # ------------------------------------------------------------------ teacher forcing

    def forward(
        self,
        input_ids: torch.LongTensor,
        image_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> InfinityModelOutput:
        r"""
        Teacher-forced pass over all scales at once (the text is never dropped: no `cond_drop_rate` here).

        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, text_length)`):
                T5 token ids of the prompts (left or right padding: T5's relative positions make them equal).
            image_ids (`torch.LongTensor` of shape `(batch_size, num_tokens)`):
                Image tokens, coarse to fine, each scale row-major: all scales, or the first few (whole) scales, in
                which case only their logits are computed (block-causality makes them the same).
            attention_mask (`torch.Tensor` of shape `(batch_size, text_length)`, *optional*):
                1 for prompt tokens, 0 for padding.
        """
        num_tokens = image_ids.shape[1]
        num_scales = self.num_scales_in(num_tokens)
        condition, text_states, text_mask = self._encode_text(input_ids, attention_mask, guided=False)

        x = condition.unsqueeze(1) + self.pos_start
        if num_scales > 1:
            sums = self.image_ids_to_summed_codes(image_ids[:, : num_tokens - self.scale_token_counts[num_scales - 1]])
            inputs = torch.cat([self._scale_input(summed, t + 1) for t, summed in enumerate(sums)], 1)
            x = torch.cat([x, self.word_embed(inputs.to(x.dtype))], 1)
        scale_index = self.image_scale_index[:num_tokens]
        x = x + self.lvl_embed(scale_index)
        block_causal = BlockCausalLayout.for_scales(self.scale_token_counts[:num_scales])  # own and earlier scales
        hidden = self._run_blocks(x, condition, text_states, text_mask, 0, num_tokens, block_causal)
        return InfinityModelOutput(logits=self._bit_logits(hidden, condition), hidden_states=hidden)

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
        `temperature`): the sum over a token's bits of their two-way log-softmax; optionally the entropy of every
        position (the sum of its bits' entropies), from one teacher-forced pass.
        """
        logits = self(input_ids=input_ids, image_ids=image_ids, attention_mask=attention_mask).logits
        return self.logprobs_from_logits(logits, image_ids, temperature, compute_entropy)

    def logprobs_from_logits(
        self,
        logits: torch.Tensor,
        image_ids: torch.LongTensor,
        temperature: float = 1.0,
        compute_entropy: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """
        Log-probabilities `(B, L)` of `image_ids` from the bit logits `(B, L, d, 2)`: the sum over a token's bits of
        their two-way log-softmax at `temperature` (float32); optionally the entropies (sums of the bits').
        """
        log_probs = (logits.float() / temperature).log_softmax(-1)
        bits = ids_to_bits(image_ids, self.config.codebook_dim)
        token_logprobs = log_probs.gather(-1, bits.unsqueeze(-1)).squeeze(-1).sum(-1)
        entropy = -(log_probs.exp() * log_probs).sum((-2, -1)) if compute_entropy else None
        return token_logprobs, entropy

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        num_scales: int | None = None,
        state: InfinitySamplingState | None = None,
        generator: torch.Generator | None = None,
        **sampling,
    ) -> InfinityGenerationOutput:
        r"""
        Sample image tokens scale by scale with a KV cache, every bit on its own. Settings not given are taken from
        `self.generation_config`.

        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, text_length)`):
                T5 token ids of the prompts. Not needed when continuing from `state`.
            attention_mask (`torch.Tensor` of shape `(batch_size, text_length)`, *optional*):
                1 for prompt tokens, 0 for padding.
            num_scales (`int`, *optional*):
                Stop after this many scales in total (counting those already in `state`); default: all.
            state ([`InfinitySamplingState`], *optional*):
                Continue from a previous call's `state` instead of starting from the prompt. The state is advanced in
                place; call `state.repeat_interleave_(k)` first to branch `k` continuations off every row.
            generator (`torch.Generator`, *optional*):
                Source of randomness, for reproducible samples.
            sampling:
                `guidance_scale`, `guidance_schedule`, `temperature`, `top_k`, `top_p` (see
                [`~trl_var.models.sampling.sampling_settings`]). Guidance mixes `s * cond + (1 - s) * uncond`, the
                unconditional branch reading the learned null text `cfg_uncond`; `top_k` and `top_p` apply per bit:
                `top_k=1` keeps the more likely value only (0 or >= 2 keeps both), and `top_p` removes the less likely
                value when its probability is at most `1 - top_p`.

        Returns:
            [`InfinityGenerationOutput`] with the tokens and log-probs of the scales generated so far (including those
            of `state`) and the state to continue from.
        """
        # 1. sampling settings: those not given come from the generation config
        sampling = sampling_settings(self.generation_config, **sampling)
        temperature, top_k, top_p = sampling["temperature"], sampling["top_k"] or 0, sampling["top_p"]
        num_total = len(self.scale_schedule)
        num_scales = num_total if num_scales is None else num_scales
        if not 1 <= num_scales <= num_total:
            raise ValueError(f"`num_scales` must be in [1, {num_total}], got {num_scales}.")

        # 2. the text, the cache and the summed codes: once per prompt batch
        guided = sampling["guidance_scale"] != 1.0
        if state is None:
            if input_ids is None:
                raise ValueError("`generate` needs `input_ids` (the prompt) or a `state` to continue from.")
            state = self._start_sampling(input_ids, attention_mask, guided)
        elif state.guided != guided:
            raise ValueError("Continue a sampling `state` with the guidance it was started with.")

        # 3. one scale per step
        batch_size = state.summed_codes.shape[0]
        offsets = [0, *torch.tensor(self.scale_token_counts).cumsum(0).tolist()]
        for t in range(state.next_scale, num_scales):
            if t == 0:
                x = state.condition.unsqueeze(1) + self.pos_start
            else:
                x = self.word_embed(self._scale_input(state.summed_codes, t).to(self.word_embed.weight.dtype))
                if guided:
                    x = torch.cat([x, x])
            x = x + self.lvl_embed.weight[t]
            # every cached key belongs to an earlier scale, so no mask; the last scale's keys and values are never
            # read again, so it attends over the cache without storing them
            cache = ReadOnlyCache(state.cache) if 0 < t == num_total - 1 else state.cache
            hidden = self._run_blocks(
                x, state.condition, state.text_states, state.text_mask, offsets[t], offsets[t + 1], cache=cache
            )
            logits = self._bit_logits(hidden, state.condition).float() / temperature
            cond_logits = logits[:batch_size]
            sample_logits = cond_logits
            if guided:
                scale = guidance_at(t, num_total, sampling["guidance_scale"], sampling["guidance_schedule"])
                sample_logits = scale * cond_logits + (1 - scale) * logits[batch_size:]
            bits = sample_bits(sample_logits, top_k, top_p, generator)
            logprobs = cond_logits.log_softmax(-1).gather(-1, bits.unsqueeze(-1)).squeeze(-1).sum(-1)

            h, w = self.scale_schedule[t]
            state.summed_codes = state.summed_codes + self._upsample_to_last(bits_to_codes(bits, h, w))
            state.image_ids.append(bits_to_ids(bits))
            state.logprobs.append(logprobs)

        return InfinityGenerationOutput(
            image_ids=torch.cat(state.image_ids, 1), logprobs=torch.cat(state.logprobs, 1), state=state
        )

    def _start_sampling(self, input_ids, attention_mask, guided: bool) -> InfinitySamplingState:
        condition, text_states, text_mask = self._encode_text(input_ids, attention_mask, guided)
        last_h, last_w = self.scale_schedule[-1]
        summed_codes = torch.zeros(
            input_ids.shape[0], self.config.codebook_dim, last_h, last_w, device=input_ids.device
        )
        return InfinitySamplingState(
            cache=DynamicCache(),
            summed_codes=summed_codes,
            condition=condition,
            text_states=text_states,
            text_mask=text_mask,
            image_ids=[],
            logprobs=[],
            guided=guided,
        )

    @torch.no_grad()
    def decode_image_tokens(self, image_ids: torch.LongTensor) -> torch.Tensor:
        """Flat `(B, num_image_tokens)` tokens -> images `(B, 3, H, W)` in [-1, 1] (RGB), via the BSQ-VAE decoder."""
        if image_ids.shape[1] != self.num_image_tokens:
            raise ValueError(f"Decoding needs whole images: {self.num_image_tokens} tokens, got {image_ids.shape[1]}.")
        summed_codes = self.image_ids_to_summed_codes(image_ids)[-1]
        dtype = next(self.vae_decoder.parameters()).dtype
        return self.vae_decoder(summed_codes.to(dtype)).clamp(-1, 1)


def sample_bits(
    logits: torch.Tensor, top_k: int, top_p: float, generator: torch.Generator | None = None
) -> torch.LongTensor:
    """
    Sample every bit of `logits` `(..., d, 2)` on its own, as the original sampler does: `top_k == 1` keeps the more
    likely value; `top_p < 1` removes the less likely value when its probability is at most `1 - top_p` (`top_k >= 2`
    and `top_p == 1` change nothing on two values). One multinomial draw per bit, in row-major order.
    """
    if top_k == 1:
        logits = logits.masked_fill(logits < logits.amax(-1, keepdim=True), float("-inf"))
    if top_p < 1.0:
        p_less, less = logits.softmax(-1).min(-1, keepdim=True)
        drop = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, less, p_less <= 1 - top_p)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(-1).reshape(-1, 2)
    return torch.multinomial(probs, 1, replacement=True, generator=generator).view(logits.shape[:-1])
