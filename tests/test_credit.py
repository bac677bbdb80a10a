import math

import pytest
import torch

from trl_var import panw_weights, propagate_mask, soft_value
from trl_var.trainer.credit import quarter_resolution_prefix, rasterize_regions, vmr_stage


NEXTFLOW_1024 = [(s, s) for s in (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 48, 64)]


def test_soft_value_oracle():
    assert soft_value(torch.tensor([0.0, 2.0]), eta=1.0).item() == pytest.approx(math.log((1 + math.e**2) / 2))
    assert soft_value(torch.tensor([0.0, 2.0]), eta=1.0).item() == pytest.approx(1.4338, abs=1e-4)


def test_soft_value_limits_and_batch_shape():
    rewards = torch.tensor([[0.0, 2.0, -1.0], [1.0, 1.0, 1.0]])
    assert soft_value(rewards, eta=1e-3).tolist() == pytest.approx([2.0, 1.0], abs=1e-2)  # small eta -> max
    assert soft_value(rewards, eta=1e4).tolist() == pytest.approx([1 / 3, 1.0], abs=1e-3)  # large eta -> mean
    assert soft_value(rewards.view(2, 1, 3).expand(2, 5, 3), eta=1.0).shape == (2, 5)
    huge = soft_value(torch.tensor([1e4, 1e4 - 1.0]), eta=1.0)
    assert torch.isfinite(huge) and huge.item() == pytest.approx(1e4 + math.log((1 + math.exp(-1)) / 2), abs=1e-2)
    with pytest.raises(ValueError, match="eta"):
        soft_value(rewards, eta=0.0)


def test_soft_value_leaves_out_unscored_continuations():
    nan = float("nan")
    values = soft_value(torch.tensor([[0.0, nan], [nan, nan], [0.0, 2.0]]), eta=1.0)
    assert values[0].item() == 0.0 and values[1].isnan() and values[2].item() == pytest.approx(1.4338, abs=1e-4)


def test_panw_weights():
    shapes = [(1, 1), (2, 2), (4, 4), (8, 8)]
    assert panw_weights(shapes, 0.0).tolist() == [1.0, 1.0, 1.0, 1.0]
    assert panw_weights(shapes, 1.0).tolist() == pytest.approx([1.0, 1 / 4, 1 / 16, 1 / 64])
    assert panw_weights([(2, 3)], 0.6).item() == pytest.approx(6**-0.6)
    # alpha = 1: every scale has the same total weight k_t * h_t * w_t
    totals = panw_weights(NEXTFLOW_1024, 1.0) * torch.tensor([h * w for h, w in NEXTFLOW_1024], dtype=torch.float32)
    assert torch.allclose(totals, torch.ones(18))
    with pytest.raises(ValueError, match="alpha"):
        panw_weights(shapes, -0.1)


def test_propagate_mask_hand_made():
    fine = torch.zeros(1, 4, 4, dtype=torch.bool)
    fine[0, 3, 0] = True  # bottom-left cell only
    masks = propagate_mask(fine, [(1, 1), (2, 2), (4, 4)])
    assert masks[0].tolist() == [[[True]]]
    assert masks[1].tolist() == [[[False, False], [True, False]]]
    assert torch.equal(masks[2], fine)


@pytest.mark.parametrize(("fine_side", "coarse_side"), [(64, 48), (16, 10), (8, 3)])
def test_propagate_mask_non_divisible_sizes_cover_every_overlapping_cell(fine_side, coarse_side):
    generator = torch.Generator().manual_seed(0)
    fine = torch.rand(2, fine_side, fine_side, generator=generator) > 0.97
    coarse = propagate_mask(fine, [(coarse_side, coarse_side), (fine_side, fine_side)])[0]
    for b in range(2):
        for i in range(coarse_side):
            for j in range(coarse_side):
                # the fine cells overlapping coarse cell (i, j)
                r0, r1 = (i * fine_side) // coarse_side, -(-((i + 1) * fine_side) // coarse_side)
                c0, c1 = (j * fine_side) // coarse_side, -(-((j + 1) * fine_side) // coarse_side)
                assert coarse[b, i, j].item() == fine[b, r0:r1, c0:c1].any().item()


def test_propagate_mask_rejects_a_mask_not_on_the_finest_grid():
    with pytest.raises(ValueError, match="finest grid"):
        propagate_mask(torch.ones(1, 4, 4, dtype=torch.bool), [(1, 1), (8, 8)])


def test_rasterize_regions_marks_overlapping_cells():
    # a 64x64 image on an 8x8 grid: cells are 8 px; a box from x=10..30, y=24..40 covers columns 1..3, rows 3..4
    mask = rasterize_regions([(10, 24, 30, 40)], image_size=(64, 64), grid_size=(8, 8))
    assert mask.nonzero().tolist() == [[r, c] for r in (3, 4) for c in (1, 2, 3)]
    dilated = rasterize_regions([(10, 24, 30, 40)], image_size=(64, 64), grid_size=(8, 8), dilation=1)
    assert dilated.sum().item() == 4 * 5 and dilated[2, 0] and not dilated[1, 0]
    assert rasterize_regions([], image_size=(64, 64), grid_size=(8, 8)) is None


def test_quarter_resolution_prefix_follows_the_paper():
    assert quarter_resolution_prefix(NEXTFLOW_1024) == 12  # m256: sides 1..16, 900 tokens
    assert sum(h * w for h, w in NEXTFLOW_1024[:12]) == 900
    assert quarter_resolution_prefix([(1, 1), (2, 2), (3, 3), (4, 4), (6, 6), (8, 8)]) == 2
    assert quarter_resolution_prefix([(1, 2), (2, 4), (4, 8), (8, 16)]) == 2


def test_vmr_stage_alternates_three_prefix_then_one_suffix():
    assert [vmr_stage(u, 3, 1) for u in range(8)] == ["prefix"] * 3 + ["suffix"] + ["prefix"] * 3 + ["suffix"]
    assert [vmr_stage(u, 0, 1) for u in range(3)] == ["suffix"] * 3
