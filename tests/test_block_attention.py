import pytest
import torch
import torch.nn.functional as F

from trl_var.models.block_attention import BlockCausalLayout, block_causal_attention


def _dense_reference(query, key, value, scale_lengths, text_mask):
    """The same attention through one dense boolean mask (the reference the staircase must equal)."""
    num_text = text_mask.shape[1]
    blocks = torch.cat(
        [torch.arange(num_text)] + [torch.full((n,), num_text + t) for t, n in enumerate(scale_lengths)]
    )
    valid = torch.cat([text_mask.bool(), torch.ones(text_mask.shape[0], sum(scale_lengths), dtype=torch.bool)], 1)
    allowed = (blocks[None, :] <= blocks[:, None])[None] & valid[:, None, :]
    allowed |= torch.eye(blocks.numel(), dtype=torch.bool)[None] & ~valid[:, :, None]  # padding sees itself
    return F.scaled_dot_product_attention(query, key, value, attn_mask=allowed[:, None])


@pytest.mark.parametrize("num_kv_heads", [4, 2])
def test_block_causal_attention_equals_the_dense_mask(num_kv_heads):
    torch.manual_seed(0)
    scale_lengths, text_mask = [1, 4, 9, 16], torch.ones(2, 5, dtype=torch.bool)
    text_mask[1, :3] = False  # left padding
    length = 5 + sum(scale_lengths)
    query = torch.randn(2, 4, length, 8)
    key, value = torch.randn(2, num_kv_heads, length, 8), torch.randn(2, num_kv_heads, length, 8)
    layout = BlockCausalLayout.for_scales(scale_lengths, text_mask)
    assert layout.blocks == [(5, 6, 6), (6, 10, 10), (10, 19, 19), (19, 35, 35)] and layout.text_queries == 5
    expected = _dense_reference(
        query,
        key.repeat_interleave(4 // num_kv_heads, 1),
        value.repeat_interleave(4 // num_kv_heads, 1),
        scale_lengths,
        text_mask,
    )
    torch.testing.assert_close(block_causal_attention(query, key, value, layout), expected, atol=1e-6, rtol=0)


def test_cached_queries_see_the_cached_prefix():
    torch.manual_seed(0)
    scale_lengths, text_mask = [1, 4, 9], torch.tensor([[0, 1, 1], [1, 1, 1]], dtype=torch.bool)
    query, key, value = (torch.randn(2, 2, 17, 8) for _ in range(3))
    expected = _dense_reference(query, key, value, scale_lengths, text_mask)
    past = 3 + 1 + 4  # text and the first two scales are in the cache
    layout = BlockCausalLayout.for_scales(scale_lengths, text_mask, past_length=past)
    assert layout.blocks == [(0, 9, 17)] and layout.text_queries == 0
    out = block_causal_attention(query[:, :, past:], key, value, layout)
    torch.testing.assert_close(out, expected[:, :, past:], atol=1e-6, rtol=0)


def test_without_text_every_scale_sees_itself_and_earlier_scales():
    torch.manual_seed(0)
    query, key, value = (torch.randn(1, 2, 14, 8) for _ in range(3))
    layout = BlockCausalLayout.for_scales([1, 4, 9])
    assert layout.key_padding is None and layout.text_queries == 0
    expected = _dense_reference(query, key, value, [1, 4, 9], torch.ones(1, 0, dtype=torch.bool))
    torch.testing.assert_close(block_causal_attention(query, key, value, layout), expected, atol=1e-6, rtol=0)
