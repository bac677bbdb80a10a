"""
Block-causal attention without a dense `(S, S)` mask.

Next-scale models attend block-causally: the queries of scale `t` see every key up to the end of scale `t` (the text
prefix, if the sequence has one, included) and nothing after it. The pattern is a staircase, so instead of one
attention call over a dense `(B, 1, S, S)` mask it is computed as one call per block of queries, over the key
prefix that block may see. Each call then needs at most a key-padding mask of shape `(B, 1, 1, K)`, which lets
`scaled_dot_product_attention` use its fused (flash / memory-efficient) kernels, and skips the masked upper half of
the work. A causal text prefix (left padding allowed) is one more call with a small `(B, 1, P, P)` mask.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward


@dataclass
class BlockCausalLayout:
    """
    Which keys every query may see.

    Args:
        blocks (`list[tuple[int, int, int]]`):
            `(query_start, query_end, key_end)` for every block of queries, in order and covering all queries: the
            queries `[query_start, query_end)` see the keys `[0, key_end)`.
        key_padding (`torch.BoolTensor` of shape `(batch_size, num_keys)`, *optional*):
            `False` at keys nobody may see (the text's padding). `None`: every key is valid.
        text_queries (`int`, defaults to 0):
            The first `text_queries` queries are a causal text prefix (queries and keys `[0, text_queries)`, causal,
            padding excluded; a padding query sees itself only, so that its row stays finite). Its block is not in
            `blocks`.
    """

    blocks: list[tuple[int, int, int]]
    key_padding: torch.Tensor | None = None
    text_queries: int = 0

    @classmethod
    def for_scales(
        cls, scale_lengths: list[int], text_mask: torch.Tensor | None = None, past_length: int = 0
    ) -> "BlockCausalLayout":
        """
        The layout of the sequence `[text (text_mask's columns) | scale 0 | scale 1 | ...]` (`scale_lengths` tokens
        per scale) for the queries from position `past_length` on: the keys before it come from a KV cache, and a
        cached block's queries are not computed again. `past_length` must fall on a block boundary.
        """
        num_text = 0 if text_mask is None else text_mask.shape[1]
        blocks, end = [], num_text
        for length in scale_lengths:
            if end >= past_length:
                blocks.append((end - past_length, end + length - past_length, end + length))
            end += length
        key_padding = None
        if text_mask is not None and not bool(text_mask.all()):
            key_padding = torch.ones(text_mask.shape[0], end, dtype=torch.bool, device=text_mask.device)
            key_padding[:, :num_text] = text_mask.bool()
        return cls(blocks=blocks, key_padding=key_padding, text_queries=num_text if past_length == 0 else 0)


def block_causal_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    layout: BlockCausalLayout,
    scale: float | None = None,
    dropout: float = 0.0,
) -> torch.Tensor:
    """
    Attention `(B, H, Q, D)` of `query` `(B, H, Q, D)` over `key` / `value` `(B, H_kv, K, D)` (grouped-query heads
    allowed) under `layout`, with no tensor of size `Q x K`.
    """
    outputs = []
    enable_gqa = query.shape[1] != key.shape[1]
    if layout.text_queries:
        p = layout.text_queries
        causal = torch.ones(p, p, dtype=torch.bool, device=query.device).tril()
        if layout.key_padding is None:
            mask = causal[None, None]
        else:
            valid = layout.key_padding[:, :p]
            mask = causal[None] & valid[:, None, :]
            mask |= torch.eye(p, dtype=torch.bool, device=query.device)[None] & ~valid[:, :, None]
            mask = mask[:, None]
        outputs.append(
            F.scaled_dot_product_attention(
                query[:, :, :p],
                key[:, :, :p],
                value[:, :, :p],
                attn_mask=mask,
                scale=scale,
                dropout_p=dropout,
                enable_gqa=enable_gqa,
            )
        )
    for query_start, query_end, key_end in layout.blocks:
        mask = None if layout.key_padding is None else layout.key_padding[:, None, None, :key_end]
        outputs.append(
            F.scaled_dot_product_attention(
                query[:, :, query_start:query_end],
                key[:, :, :key_end],
                value[:, :, :key_end],
                attn_mask=mask,
                scale=scale,
                dropout_p=dropout,
                enable_gqa=enable_gqa,
            )
        )
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)


BLOCK_CAUSAL_ATTENTION = "trl_var_block_causal"


def block_causal_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: "BlockCausalLayout | torch.Tensor | None",
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """
    transformers' attention interface (registered as `"trl_var_block_causal"`): a [`BlockCausalLayout`] passed as the
    attention mask runs [`block_causal_attention`]; a tensor mask (or none) runs transformers' SDPA attention unchanged.
    """
    if not isinstance(attention_mask, BlockCausalLayout):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    output = block_causal_attention(query, key, value, attention_mask, scale=scaling, dropout=dropout)
    return output.transpose(1, 2).contiguous(), None


AttentionInterface.register(BLOCK_CAUSAL_ATTENTION, block_causal_attention_forward)
