import inspect
import os

import numpy as np
import PIL.Image
import pytest
import torch
import trl
from conftest import tiny_var_config
from datasets import Dataset
from transformers import AutoModel
from trl import GRPOTrainer

from trl_var import VARForImageGeneration, VARGRPOConfig, VARGRPOTrainer
from trl_var.trainer.var_grpo_trainer import GenerationRound


def brightness(completions, **kwargs):
    return [float(np.asarray(image).mean() / 255) for image in completions]


def _model(tokenizer, codebook_std=30.0):
    torch.manual_seed(0)
    model = VARForImageGeneration(tiny_var_config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id))
    # Spread the random codebook so that different tokens decode to visibly different images.
    with torch.no_grad():
        model.vqmodel.quantizer.codebook.weight.normal_(0, codebook_std)
    return model


PLAIN_GRPO = dict(vmr_prefix_scales=0, panw_alpha=0.0, mask_propagation=False)


def _args(tmp_path, **kwargs):
    """Plain GRPO on whole images unless a test turns the paper's components on (tests/test_method.py does)."""
    defaults = dict(
        **PLAIN_GRPO,
        output_dir=str(tmp_path),
        num_generations=4,
        per_device_train_batch_size=8,
        max_steps=4,
        learning_rate=1e-2,
        logging_steps=1,
        report_to="none",
        guidance_scale=1.0,
        top_k=0,
        top_p=1.0,
        save_strategy="no",
        gradient_checkpointing=False,
        seed=0,
        disable_tqdm=True,
    )
    return VARGRPOConfig(**{**defaults, **kwargs})


def _dataset(n=16):
    return Dataset.from_dict({"prompt": ["a bright image", 'the word "CAT"'] * (n // 2), "target": ["CAT"] * n})


def test_overridden_trl_signatures_are_unchanged():
    # VARGRPOTrainer overrides these TRL internals: fail loudly when a TRL upgrade changes them.
    assert trl.__version__.startswith("1.16."), "trl-var is built against TRL 1.16; re-check the overrides"
    assert list(inspect.signature(GRPOTrainer._generate).parameters) == ["self", "prompts"]
    params = list(inspect.signature(GRPOTrainer._get_per_token_logps_and_entropies).parameters)
    assert params[:7] == [
        "self",
        "model",
        "input_ids",
        "attention_mask",
        "logits_to_keep",
        "batch_size",
        "compute_entropy",
    ]
    source = inspect.getsource(GRPOTrainer._generate_and_score_completions)
    assert "= self._generate(prompts)" in source
    assert "tool_images,\n        ) = self._generate(prompts)" in source  # still an 8-tuple ending with tool_images
    # `train` and `init_hf_repo` are overridden with these signatures, passing every argument on
    assert list(inspect.signature(GRPOTrainer.train).parameters) == [
        "self",
        "resume_from_checkpoint",
        "trial",
        "ignore_keys_for_eval",
    ]
    assert list(inspect.signature(GRPOTrainer.init_hf_repo).parameters) == ["self", "token", "private"]


def test_readme_lists_every_overridden_trl_method():
    overridden = {
        name for name, value in vars(VARGRPOTrainer).items() if callable(value) and hasattr(GRPOTrainer, name)
    }
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    section = readme.split("## How it maps to TRL")[1].split("\n## ")[0]
    listed = {line.split("`")[1] for line in section.splitlines() if line.startswith("| `")}
    assert listed == overridden
    assert len(overridden) == 10


def test_one_generation_round_carries_the_stage_continuations_and_region_masks(tmp_path, char_tokenizer):
    class CornerReward:
        """Brightness, found in the top-left quarter of every image."""

        __name__ = "corner"

        def __init__(self):
            self.last_regions = []

        def __call__(self, completions, **kwargs):
            self.last_regions = [[(0, 0, 8, 8)]] * len(completions)
            return brightness(completions)

    args = _args(tmp_path, vmr_prefix_scales=2, mask_propagation=True)
    trainer = VARGRPOTrainer(
        _model(char_tokenizer), CornerReward(), args=args, train_dataset=_dataset(), processing_class=char_tokenizer
    )
    assert trainer._round == GenerationRound() and trainer._train_round is trainer._round  # declared when built
    rows = [{"prompt": "a bright image"}] * 8
    trainer.model.train()
    trainer.state.global_step = 0  # the first update of the 3:1 cycle: a prefix round
    output = trainer._generate_and_score_completions(rows)
    round_ = trainer._round
    assert round_.stage == "prefix" and trainer._train_round is round_
    # the K = 2 whole images that continue every 5-token prefix, which the reward scored
    continuations = torch.tensor(round_.continuation_ids)
    assert continuations.shape == (16, 85)
    assert torch.equal(continuations[:, :5], output["completion_ids"].repeat_interleave(2, 0))
    # the box (0, 0, 8, 8) of a 16x16 image is the top-left 4x4 cells of the 8x8 token grid
    corner = torch.zeros(8, 8, dtype=torch.bool)
    corner[:4, :4] = True
    assert torch.equal(round_.region_masks, corner.expand(8, -1, -1))
    trainer.model.eval()
    trainer._generate_and_score_completions(rows)
    assert trainer._round.stage == "full" and trainer._round.continuation_ids is None
    assert trainer._train_round is round_  # an evaluation round leaves the buffered training round in place


def test_train_changes_parameters_and_logs_rewards_and_losses(tmp_path, char_tokenizer):
    model = _model(char_tokenizer)
    trainer = VARGRPOTrainer(
        model, brightness, args=_args(tmp_path), train_dataset=_dataset(), processing_class=char_tokenizer
    )
    before = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    trainer.train()
    changed = [name for name, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[name])]
    assert set(changed) == set(before), f"unchanged: {set(before) - set(changed)}"
    assert all(
        torch.equal(p, q) for p, q in zip(model.vqmodel.parameters(), _model(char_tokenizer).vqmodel.parameters())
    )
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 4
    assert all(np.isfinite(entry["loss"]) and 0 < entry["reward"] < 1 for entry in logs)
    assert all("rewards/brightness/mean" in entry and "entropy" in entry for entry in logs)
    grids = sorted(os.listdir(tmp_path / "samples"))
    assert grids[0] == "step-000001.png" and len(grids) == 4  # one image grid per logging step


def test_reward_functions_receive_pil_images_prompts_and_dataset_columns(tmp_path, char_tokenizer):
    seen = {}

    def spy(prompts, completions, completion_ids, target, **kwargs):
        seen.update(prompts=prompts, completions=completions, completion_ids=completion_ids, target=target)
        return [0.0] * len(prompts)

    trainer = VARGRPOTrainer(
        _model(char_tokenizer),
        [spy, brightness],
        args=_args(tmp_path, max_steps=1, reward_weights=[1.0, 2.0]),
        train_dataset=_dataset(),
        processing_class=char_tokenizer,
    )
    trainer.train()
    assert len(seen["completions"]) == 8
    assert all(isinstance(image, PIL.Image.Image) and image.size == (16, 16) for image in seen["completions"])
    assert seen["target"] == ["CAT"] * 8
    assert set(seen["prompts"]) <= {"a bright image", 'the word "CAT"'}
    assert all(len(ids) == 85 for ids in seen["completion_ids"])
    log = trainer.state.log_history[0]
    assert log["reward"] == pytest.approx(2.0 * log["rewards/brightness/mean"], rel=1e-5)


def test_beta_builds_a_reference_model_without_name_or_path(tmp_path, char_tokenizer):
    model = _model(char_tokenizer)
    assert model.config._name_or_path == ""
    trainer = VARGRPOTrainer(
        model, brightness, args=_args(tmp_path, beta=0.1), train_dataset=_dataset(), processing_class=char_tokenizer
    )
    assert trainer.ref_model is not None and trainer.ref_model is not model
    assert not any(p.requires_grad for p in trainer.ref_model.parameters())
    trainer.train()
    kls = [entry["kl"] for entry in trainer.state.log_history if "kl" in entry]
    assert len(kls) == 4 and kls[0] == pytest.approx(0.0, abs=1e-6) and kls[-1] > 0  # the policy moves away


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_loss_types_and_multiple_iterations_run(tmp_path, char_tokenizer, loss_type):
    args = _args(tmp_path, loss_type=loss_type, num_iterations=2, steps_per_generation=2, max_steps=4)
    trainer = VARGRPOTrainer(
        _model(char_tokenizer), brightness, args=args, train_dataset=_dataset(), processing_class=char_tokenizer
    )
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 4 and all(np.isfinite(losses))
    assert trainer.max_completion_length == 85


def test_checkpoint_resume_and_saved_model_loads(tmp_path, char_tokenizer):
    args = _args(tmp_path, max_steps=4, save_strategy="steps", save_steps=2)
    trainer = VARGRPOTrainer(
        _model(char_tokenizer), brightness, args=args, train_dataset=_dataset(), processing_class=char_tokenizer
    )
    trainer.train()
    assert (tmp_path / "checkpoint-2" / "model.safetensors").exists()
    resumed = VARGRPOTrainer(
        _model(char_tokenizer), brightness, args=args, train_dataset=_dataset(), processing_class=char_tokenizer
    )
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert resumed.state.global_step == 4
    trainer.save_model(str(tmp_path / "final"))
    loaded = AutoModel.from_pretrained(tmp_path / "final")
    assert isinstance(loaded, VARForImageGeneration)
    assert torch.equal(loaded.image_head.weight, trainer.model.image_head.weight)


@pytest.mark.slow
def test_grpo_raises_a_simple_image_reward(tmp_path, char_tokenizer):
    args = _args(
        tmp_path,
        max_steps=40,
        num_generations=8,
        per_device_train_batch_size=16,
        logging_steps=5,
        log_completions=False,
    )
    trainer = VARGRPOTrainer(
        _model(char_tokenizer), brightness, args=args, train_dataset=_dataset(64), processing_class=char_tokenizer
    )
    trainer.train()
    rewards = [entry["reward"] for entry in trainer.state.log_history if "reward" in entry]
    assert len(rewards) == 8
    assert rewards[-1] > rewards[0] + 0.03, rewards  # same seed every run: 0.48 -> 0.53 when this was written


def test_dataset_without_prompt_column_is_a_clear_error(tmp_path, char_tokenizer):
    dataset = Dataset.from_dict({"caption": ["a cat"] * 8})
    with pytest.raises(ValueError, match=r"`train_dataset` has no 'prompt' column.*caption"):
        VARGRPOTrainer(
            _model(char_tokenizer),
            brightness,
            args=_args(tmp_path),
            train_dataset=dataset,
            processing_class=char_tokenizer,
        )


def test_empty_prompt_is_a_clear_error(tmp_path, char_tokenizer):
    dataset = Dataset.from_dict({"prompt": ["a cat", "  ", "a dog", "x"] * 2})
    with pytest.raises(ValueError, match=r"`train_dataset` row 1: the prompt is empty"):
        VARGRPOTrainer(
            _model(char_tokenizer),
            brightness,
            args=_args(tmp_path),
            train_dataset=dataset,
            processing_class=char_tokenizer,
        )


def test_conversational_prompts_are_a_clear_error(tmp_path, char_tokenizer):
    dataset = Dataset.from_dict({"prompt": [[{"role": "user", "content": "a cat"}]] * 8})
    with pytest.raises(ValueError, match="plain-text prompts"):
        VARGRPOTrainer(
            _model(char_tokenizer),
            brightness,
            args=_args(tmp_path),
            train_dataset=dataset,
            processing_class=char_tokenizer,
        )


def test_num_generations_below_two_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="num_generations"):
        _args(tmp_path, num_generations=1, per_device_train_batch_size=1)


def test_missing_tokenizer_for_an_in_memory_model_is_a_clear_error(tmp_path, char_tokenizer):
    with pytest.raises(ValueError, match="processing_class"):
        VARGRPOTrainer(_model(char_tokenizer), brightness, args=_args(tmp_path), train_dataset=_dataset())


def test_config_defaults_follow_the_paper_and_stay_cpu_sane(tmp_path):
    args = VARGRPOConfig(output_dir=str(tmp_path), report_to="none")
    assert (args.guidance_scale, args.top_k, args.top_p, args.num_generations) == (5.0, 2, 0.9, 16)
    assert (args.learning_rate, args.adam_beta2, args.weight_decay) == (1e-5, 0.95, 0.05)
    assert args.bf16 is (torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    with pytest.raises(ValueError, match="guidance_schedule"):
        VARGRPOConfig(output_dir=str(tmp_path), guidance_schedule="cosine")


def test_sampling_kwargs_are_the_rollouts_and_evaluation_overrides_only_what_is_set(tmp_path):
    args = VARGRPOConfig(
        output_dir=str(tmp_path), guidance_scale=3.0, guidance_schedule="linear", top_k=0, top_p=1.0, eval_top_k=2
    )
    rollouts = {"guidance_scale": 3.0, "guidance_schedule": "linear", "temperature": 1.0, "top_k": 0, "top_p": 1.0}
    assert args.sampling_kwargs() == rollouts
    assert args.sampling_kwargs(evaluation=True) == {**rollouts, "top_k": 2}


def test_a_model_folder_of_another_type_is_refused_naming_the_supported_types(tmp_path, char_tokenizer):
    from transformers import GPT2Config, GPT2Model

    GPT2Model(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=len(char_tokenizer))).save_pretrained(
        tmp_path / "m"
    )
    with pytest.raises(
        TypeError, match=r"GPT2Model \(model type 'gpt2'\) is not a next-scale image policy.*'infinity'"
    ):
        VARGRPOTrainer(str(tmp_path / "m"), brightness, args=_args(tmp_path / "out"), train_dataset=_dataset())
