import logging
import stat

import pytesseract
import pytest
import torch
from PIL import Image
from test_trainer import _args, _dataset, _model, brightness

from trl_var import VARGRPOTrainer
from trl_var.rewards import OCRReward
from trl_var.trainer.monitoring import image_statistics, logprob_agreement


def test_image_statistics_on_hand_made_images():
    black = -torch.ones(1, 3, 4, 4)
    white = torch.ones(1, 3, 4, 4)
    half = torch.cat([-torch.ones(1, 3, 4, 2), torch.ones(1, 3, 4, 2)], dim=3)  # left black, right white
    stats = image_statistics(torch.cat([black, white, half, half]), group_size=2)
    assert stats["brightness"] == pytest.approx((0 + 1 + 0.5 + 0.5) / 4)
    assert stats["dark_fraction"] == pytest.approx((1 + 0 + 0.5 + 0.5) / 4)
    assert stats["color_entropy"] == pytest.approx((0 + 0 + 1 + 1) / 4)  # two equally frequent colours: 1 bit
    # group 1: black vs white differ everywhere by 1; group 2: identical images
    assert stats["group_diversity"] == pytest.approx((1.0 + 0.0) / 2)


def test_logprob_agreement_per_scale():
    sampled = torch.zeros(2, 5)
    recomputed = torch.tensor([[0.0, 0.1, 0.1, 0.1, 0.1], [0.0, -0.1, -0.1, -0.1, -0.1]])
    stats = logprob_agreement(sampled, recomputed, torch.tensor([0, 1, 1, 1, 1]), num_scales=3)
    assert stats["scale_0/abs_diff"] == 0.0 and stats["scale_1/abs_diff"] == pytest.approx(0.1)
    assert "scale_2/abs_diff" not in stats and stats["max_abs_diff"] == pytest.approx(0.1)
    assert stats["ratio_mean"] == pytest.approx((2 + 4 * (torch.tensor(0.1).exp() + torch.tensor(-0.1).exp())) / 10)


def test_trainer_logs_image_statistics_and_sampled_logprobs_agree(tmp_path, char_tokenizer):
    trainer = VARGRPOTrainer(
        _model(char_tokenizer),
        brightness,
        args=_args(tmp_path, max_steps=2),
        train_dataset=_dataset(),
        processing_class=char_tokenizer,
    )
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    for log in logs:
        assert 0 <= log["images/brightness"] <= 1 and 0 <= log["images/group_diversity"] <= 1
        assert log["images/color_entropy"] > 0
        # the policy that sampled recomputes the same log-probs: the importance ratio starts at 1
        assert log["logprob_agreement/max_abs_diff"] < 1e-4
        assert log["logprob_agreement/ratio_mean"] == pytest.approx(1.0, abs=1e-5)
        assert "logprob_agreement/scale_3/abs_diff" in log


def test_eval_sampling_settings_are_separate_from_the_rollouts(tmp_path, char_tokenizer):
    model = _model(char_tokenizer)
    seen = []
    generate = model.generate

    def spy(*args, **kwargs):
        if "state" not in kwargs:
            seen.append((model.training, kwargs["top_k"], kwargs["guidance_scale"]))
        return generate(*args, **kwargs)

    model.generate = spy
    args = _args(
        tmp_path,
        max_steps=1,
        top_k=3,
        eval_top_k=1,
        eval_guidance_scale=2.0,
        eval_strategy="steps",
        eval_steps=1,
        per_device_eval_batch_size=8,
    )
    trainer = VARGRPOTrainer(
        model,
        brightness,
        args=args,
        train_dataset=_dataset(),
        eval_dataset=_dataset(8),
        processing_class=char_tokenizer,
    )
    trainer.train()
    assert (True, 3, 1.0) in seen and (False, 1, 2.0) in seen
    assert any("eval_reward" in log for log in trainer.state.log_history)


def test_a_hung_tesseract_call_scores_none_and_is_logged(tmp_path, monkeypatch, caplog):
    fake = tmp_path / "tesseract"
    fake.write_text('#!/bin/sh\nif [ "$1" = "--version" ]; then echo "tesseract 5.3.0"; exit 0; fi\nsleep 20\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(pytesseract.pytesseract, "tesseract_cmd", str(fake))
    reward = OCRReward(timeout=0.5)
    with caplog.at_level(logging.WARNING):
        rewards = reward(prompts=['the word "CAT"'], completions=[Image.new("RGB", (64, 64), "white")])
    assert rewards == [None] and reward.last_words == [[]]
    assert any("did not finish within 0.5 s" in record.message for record in caplog.records)
