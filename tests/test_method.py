"""The paper's three components in VARGRPOTrainer: Value as Middle Return, PANW and Mask Propagation."""

import logging

import numpy as np
import pytest
import torch
from test_trainer import _args, _dataset, _model, brightness
from trl import GRPOTrainer

from trl_var import VARGRPOTrainer, panw_weights, propagate_mask, soft_value


PAPER = dict(vmr_prefix_scales=None, panw_alpha=0.6, mask_propagation=True)
# The tiny schedule is (1, 1), (2, 2), (4, 4), (8, 8): the quarter-side prefix is 2 scales, 1 + 4 = 5 tokens.
PREFIX_TOKENS = 5


class SpyReward:
    """Brightness, remembering what it was called with."""

    __name__ = "spy"

    def __init__(self):
        self.calls = []

    def __call__(self, prompts, completions, completion_ids, **kwargs):
        rewards = brightness(completions)
        self.calls.append({"prompts": prompts, "completion_ids": completion_ids, "rewards": rewards})
        return rewards


class BoxReward:
    """A reward that says where it looked: the top-left quarter of even-numbered images, nothing on odd ones."""

    __name__ = "box"

    def __init__(self):
        self.last_regions = []  # present from construction: the trainer recognizes region rewards when it is built

    def __call__(self, prompts, completions, **kwargs):
        self.last_regions = [[(0, 0, 8, 8)] if i % 2 == 0 else [] for i in range(len(completions))]
        return brightness(completions)


def _generation_batch(n_prompts=2, group=4):
    rows = [{"prompt": f"prompt number {i}", "target": "CAT"} for i in range(n_prompts)]
    return [row for row in rows for _ in range(group)]


def _trainer(tmp_path, tokenizer, reward=brightness, **kwargs):
    args = _args(tmp_path, **{**PAPER, **kwargs})
    trainer = VARGRPOTrainer(
        _model(tokenizer), reward, args=args, train_dataset=_dataset(), processing_class=tokenizer
    )
    trainer.model.train()
    return trainer


def test_defaults_split_at_the_quarter_resolution(tmp_path, char_tokenizer):
    trainer = _trainer(tmp_path, char_tokenizer)
    assert trainer.prefix_scales == 2
    assert (trainer.token_scale_index < trainer.prefix_scales).sum().item() == PREFIX_TOKENS


def test_prefix_update_rewards_each_prefix_with_the_soft_value_of_its_continuations(tmp_path, char_tokenizer):
    spy = SpyReward()
    trainer = _trainer(tmp_path, char_tokenizer, reward=spy, mask_propagation=False, vmr_eta=0.5)
    trainer.state.global_step = 0  # update 0 of the 3:1 cycle: a prefix update
    output = trainer._generate_and_score_completions(_generation_batch())

    # the prefix tokens are the rollout: suffix tokens carry no loss (they are not even in the batch)
    assert output["completion_ids"].shape == (8, PREFIX_TOKENS)
    assert (output["completion_mask"] > 0).all()
    # K = 2 continuations of every prefix were scored, and they share the prefix's tokens exactly
    (call,) = spy.calls
    continuations = torch.tensor(call["completion_ids"])
    assert continuations.shape == (16, 85) and call["prompts"][0] == call["prompts"][1]
    assert torch.equal(continuations[:, :PREFIX_TOKENS], output["completion_ids"].repeat_interleave(2, 0))
    assert not torch.equal(continuations[0::2, PREFIX_TOKENS:], continuations[1::2, PREFIX_TOKENS:])
    # the advantages are the group-normalized soft values
    values = soft_value(torch.tensor(call["rewards"]).view(8, 2), eta=0.5).view(2, 4)
    expected = (values - values.mean(1, keepdim=True)) / (values.std(1, keepdim=True) + 1e-4)
    torch.testing.assert_close(output["advantages"], expected.flatten(), atol=1e-4, rtol=1e-4)
    assert trainer._metrics["train"]["vmr/value"][-1] == pytest.approx(values.mean().item(), abs=1e-5)


@pytest.mark.parametrize(
    ("grouping", "rollout_batch_size"), [("shared_prefix", None), ("shared_prefix", 2), ("independent", 2)]
)
def test_suffix_update_trains_only_suffix_tokens(tmp_path, char_tokenizer, grouping, rollout_batch_size):
    trainer = _trainer(
        tmp_path,
        char_tokenizer,
        mask_propagation=False,
        vmr_suffix_grouping=grouping,
        rollout_batch_size=rollout_batch_size,
    )
    trainer.state.global_step = 3  # the fourth update of the 3:1 cycle: a suffix update
    output = trainer._generate_and_score_completions(_generation_batch())
    ids, weights = output["completion_ids"], output["completion_mask"]
    assert ids.shape == (8, 85)
    assert (weights[:, :PREFIX_TOKENS] == 0).all() and (weights[:, PREFIX_TOKENS:] > 0).all()
    prefixes = ids[:, :PREFIX_TOKENS].view(2, 4, PREFIX_TOKENS)
    shared = all(torch.equal(group[0], row) for group in prefixes for row in group)
    assert shared == (grouping == "shared_prefix")


def test_prefix_round_sampled_in_chunks(tmp_path, char_tokenizer):
    spy = SpyReward()
    trainer = _trainer(
        tmp_path,
        char_tokenizer,
        reward=spy,
        mask_propagation=False,
        rollout_batch_size=3,
        vmr_suffix_grouping="independent",
    )
    trainer.state.global_step = 0
    output = trainer._generate_and_score_completions(_generation_batch())
    assert output["completion_ids"].shape == (8, PREFIX_TOKENS)
    continuations = torch.tensor(spy.calls[0]["completion_ids"])
    assert torch.equal(continuations[:, :PREFIX_TOKENS], output["completion_ids"].repeat_interleave(2, 0))


def test_stage_alternates_three_prefix_to_one_suffix_and_resumes_in_place(tmp_path, char_tokenizer):
    args = dict(max_steps=8, save_strategy="steps", save_steps=5, mask_propagation=False)
    trainer = _trainer(tmp_path, char_tokenizer, **args)
    trainer.train()
    stages = [log["vmr/prefix_update"] for log in trainer.state.log_history if "vmr/prefix_update" in log]
    assert stages == [1, 1, 1, 0, 1, 1, 1, 0]
    resumed = _trainer(tmp_path, char_tokenizer, **args)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-5"))
    after = [log["vmr/prefix_update"] for log in resumed.state.log_history if log.get("step", 0) > 5 and "loss" in log]
    assert after == [1, 1, 0]


def test_stage_alternation_counts_generation_rounds_when_a_round_serves_two_updates(tmp_path, char_tokenizer):
    trainer = _trainer(tmp_path, char_tokenizer, max_steps=8, num_iterations=2, mask_propagation=False)
    trainer.train()
    stages = [log["vmr/prefix_update"] for log in trainer.state.log_history if "loss" in log]
    assert stages == [1, 1, 1, 1, 1, 1, 0, 0]  # rounds P, P, P, S of two updates each


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dapo", "dr_grpo"])
def test_panw_weights_reach_the_gradient_of_every_loss_type(tmp_path, char_tokenizer, loss_type):
    trainer = _trainer(tmp_path, char_tokenizer, vmr_prefix_scales=0, mask_propagation=False, loss_type=loss_type)
    inputs = trainer._generate_and_score_completions(_generation_batch())
    inputs["advantages"] = torch.ones(8)
    trainer.current_gradient_accumulation_steps = 1  # set by `train()`, which this test does not run
    logps = torch.zeros(8, 85, requires_grad=True)
    trainer._get_per_token_logps_and_entropies = lambda *args, **kwargs: (logps, torch.zeros(8, 85), None)
    trainer._compute_loss(trainer.model, inputs).backward()
    # d(-ratio * A)/d logp = -A * weight / normalizer, with weights k_t rescaled so each row sums to its 85 tokens
    k = panw_weights([(1, 1), (2, 2), (4, 4), (8, 8)], 0.6)[trainer.token_scale_index]
    weights = k * 85 / k.sum()
    normalizer = {"grpo": 85 * 8, "bnpo": 85 * 8, "dapo": 85 * 8, "dr_grpo": 8 * 85}[loss_type]
    torch.testing.assert_close(logps.grad, (-weights / normalizer).expand(8, -1), atol=1e-7, rtol=1e-5)


def test_panw_alpha_one_gives_every_scale_the_same_total_weight(tmp_path, char_tokenizer):
    trainer = _trainer(tmp_path, char_tokenizer, vmr_prefix_scales=0, panw_alpha=1.0, mask_propagation=False)
    weights = trainer._generate_and_score_completions(_generation_batch())["completion_mask"]
    per_scale = torch.stack([weights[:, s:e].sum(1) for s, e in [(0, 1), (1, 5), (5, 21), (21, 85)]], 1)
    torch.testing.assert_close(per_scale, torch.full_like(per_scale, 85 / 4))  # rows sum to the token count
    shares = [trainer._metrics["train"][f"panw/weight_share/scale_{t}"][-1] for t in range(4)]
    assert shares == pytest.approx([0.25] * 4)


def test_panw_alpha_zero_is_the_unweighted_loss(tmp_path, char_tokenizer):
    trainer = _trainer(tmp_path, char_tokenizer, vmr_prefix_scales=0, panw_alpha=0.0, mask_propagation=False)
    weights = trainer._generate_and_score_completions(_generation_batch())["completion_mask"]
    assert torch.equal(weights, torch.ones(8, 85))


def test_everything_off_is_plain_grpo(tmp_path, char_tokenizer):
    class FoundationTrainer(VARGRPOTrainer):
        # TRL's rollout scoring with no weights at all: the trainer before the paper's components
        def _generate_and_score_completions(self, inputs):
            return GRPOTrainer._generate_and_score_completions(self, inputs)

    off = dict(vmr_prefix_scales=0, panw_alpha=0.0, mask_propagation=False, max_steps=3)
    losses = []
    for cls in (VARGRPOTrainer, FoundationTrainer):
        trainer = cls(
            _model(char_tokenizer),
            brightness,
            args=_args(tmp_path, **off),
            train_dataset=_dataset(),
            processing_class=char_tokenizer,
        )
        trainer.train()
        losses.append([log["loss"] for log in trainer.state.log_history if "loss" in log])
    assert losses[0] == losses[1] and len(losses[0]) == 3


def test_mask_propagation_gates_the_loss_with_the_reward_regions(tmp_path, char_tokenizer):
    trainer = _trainer(tmp_path, char_tokenizer, reward=BoxReward(), vmr_prefix_scales=0, panw_alpha=0.0)
    weights = trainer._generate_and_score_completions(_generation_batch())["completion_mask"]
    # even rows: the box (0, 0, 8, 8) of a 16x16 image is the top-left 4x4 cells of the 8x8 grid, propagated
    fine = torch.zeros(1, 8, 8, dtype=torch.bool)
    fine[0, :4, :4] = True
    expected = torch.cat([m.flatten(1) for m in propagate_mask(fine, [(1, 1), (2, 2), (4, 4), (8, 8)])], 1).float()
    assert torch.equal(weights[0::2], expected.expand(4, -1))
    assert int(weights[0].sum()) == 1 + 1 + 4 + 16
    assert torch.equal(weights[1::2], torch.ones(4, 85))  # no region found: no gating
    assert trainer._metrics["train"]["mp/coverage/scale_3"][-1] == pytest.approx((16 / 64 + 1) / 2)


def test_prefix_masks_are_the_union_over_continuations(tmp_path, char_tokenizer):
    class CornerReward(BoxReward):
        # continuation 0 of every prefix shows its text top-left, continuation 1 bottom-right
        def __call__(self, prompts, completions, **kwargs):
            corners = [(0, 0, 8, 8), (8, 8, 16, 16)]
            self.last_regions = [[corners[i % 2]] for i in range(len(completions))]
            return brightness(completions)

    trainer = _trainer(tmp_path, char_tokenizer, reward=CornerReward(), panw_alpha=0.0)
    trainer.state.global_step = 0
    weights = trainer._generate_and_score_completions(_generation_batch())["completion_mask"]
    # 1x1: on; 2x2: the top-left and bottom-right cells, from one continuation each
    assert torch.equal(weights, torch.tensor([[1.0, 1.0, 0.0, 0.0, 1.0]]).expand(8, -1))


def test_missing_region_rewards_are_reported_once(tmp_path, char_tokenizer, caplog):
    with caplog.at_level(logging.WARNING):
        _trainer(tmp_path, char_tokenizer)
    assert sum("no reward function provides regions" in r.message for r in caplog.records) == 1


def test_invalid_split_is_a_clear_error(tmp_path, char_tokenizer):
    with pytest.raises(ValueError, match=r"`vmr_prefix_scales` is 4, but the model has 4 scales"):
        _trainer(tmp_path, char_tokenizer, vmr_prefix_scales=4)
    with pytest.raises(ValueError, match="vmr_num_continuations"):
        _args(tmp_path, vmr_num_continuations=0)
    with pytest.raises(ValueError, match="panw_alpha"):
        _args(tmp_path, panw_alpha=-0.5)


def test_training_with_all_three_components_changes_the_parameters(tmp_path, char_tokenizer):
    trainer = _trainer(tmp_path, char_tokenizer, reward=BoxReward(), max_steps=4, beta=0.05)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    changed = [n for n, p in trainer.model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert "image_head.weight" in changed and len(changed) > len(before) // 2
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert [log["vmr/prefix_update"] for log in logs] == [1, 1, 1, 0]
    assert all(np.isfinite(log["loss"]) and "mp/coverage/scale_0" in log for log in logs)
