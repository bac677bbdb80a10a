import logging
import os
import shutil
import time

import pytest
from transformers import GPT2Config, GPT2Model

from trl_var import VARGRPOConfig
from trl_var.trainer.preflight import (
    check_enough_prompts,
    create_hub_repository,
    load_policy,
    unknown_characters,
    warn_unknown_characters,
)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED_MODEL = os.path.join(ROOT, "recipes", "models", "var-tiny-text-render")


def test_a_model_path_that_is_no_folder_says_so_before_any_hub_retry(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"No such local model folder: '.*missing' \(resolved to /"):
        load_policy(str(tmp_path / "missing"))
    monkeypatch.chdir(tmp_path)
    start = time.monotonic()
    with pytest.raises(FileNotFoundError, match=r"'outputs/run': no local folder \(/.*outputs/run\) nor a reachable"):
        load_policy("outputs/run")  # a relative path reads as a Hub id; HF_HUB_OFFLINE=1 stands for an unreachable Hub
    assert time.monotonic() - start < 10


def test_a_truncated_weights_file_is_named(tmp_path):
    folder = shutil.copytree(SHIPPED_MODEL, tmp_path / "model")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: os.path.getsize(weights) // 2])
    with pytest.raises(ValueError, match=rf"The weights file {weights} is truncated"):
        load_policy(str(folder))


def test_a_model_of_another_type_is_refused_at_load_time_naming_the_supported_types(tmp_path, char_tokenizer):
    GPT2Model(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=len(char_tokenizer))).save_pretrained(tmp_path)
    char_tokenizer.save_pretrained(tmp_path)
    with pytest.raises(TypeError, match=r"GPT2Model \(model type 'gpt2'\) is not a next-scale image policy.*'var'"):
        load_policy(str(tmp_path))


def test_the_shipped_model_loads_as_a_policy_with_a_left_padding_tokenizer():
    model, tokenizer = load_policy(SHIPPED_MODEL)
    assert model.num_image_tokens == 130 and tokenizer.padding_side == "left"


def test_fewer_prompts_than_one_step_samples_fail_naming_the_numbers():
    args = VARGRPOConfig(output_dir="x", bf16=False, num_generations=8, per_device_train_batch_size=16)
    check_enough_prompts(2, args)
    with pytest.raises(ValueError, match=r"The dataset has 1 prompt\(s\), but one step samples 2: .* 16 images"):
        check_enough_prompts(1, args)


def test_characters_the_tokenizer_does_not_know_are_named_with_their_prompt(char_tokenizer, caplog):
    prompts = ['a sign that says "CAFÉ"', 'a sign that says "CAT"', 'the word "中文"']
    assert unknown_characters(char_tokenizer, prompts) == {prompts[0]: "É", prompts[2]: "中文"}
    with caplog.at_level(logging.WARNING):
        warn_unknown_characters(char_tokenizer, prompts)
    assert "2 of 3 prompts" in caplog.text and "'<unk>'" in caplog.text and "'中文'" in caplog.text
    assert warn_unknown_characters(char_tokenizer, prompts[1:2]) == {}


def test_an_unreachable_hub_names_the_endpoint_and_the_repository_creation(monkeypatch):
    from fake_hub import FakeHub, serve

    monkeypatch.setenv("HF_TOKEN", FakeHub.token)
    args = VARGRPOConfig(output_dir="outputs/run", bf16=False, hub_model_id="trl-var-tester/run")
    with serve(FakeHub()) as hub:
        assert create_hub_repository(args) == "trl-var-tester/run"
        hub.go_offline()
        with pytest.raises(RuntimeError) as error:
            create_hub_repository(args)
    message = str(error.value)
    assert "Could not create the Hub repository 'trl-var-tester/run' at https://huggingface.co" in message
    assert "ConnectError" in message


def _no_reward(completions, **kwargs):
    return [0.0] * len(completions)


def test_vmr_prefix_scales_out_of_range_fails_before_the_trainer_writes_anything(tmp_path, tiny_model, char_tokenizer):
    from datasets import Dataset

    from trl_var import VARGRPOTrainer

    args = VARGRPOConfig(output_dir=str(tmp_path / "run"), bf16=False, report_to="none", vmr_prefix_scales=4)
    dataset = Dataset.from_dict({"prompt": ['the word "CAT"'] * 16})
    with pytest.raises(ValueError, match=r"`vmr_prefix_scales` is 4, but the model has 4 scales: .* use 1\.\.3"):
        VARGRPOTrainer(tiny_model, _no_reward, args, dataset, processing_class=char_tokenizer)
    assert not (tmp_path / "run").exists()


def test_a_hub_error_while_the_trainer_creates_the_repository_names_it_and_the_endpoint(
    tmp_path, tiny_model, char_tokenizer, monkeypatch
):
    import httpx2
    from datasets import Dataset
    from fake_hub import FakeHub, serve

    from trl_var import VARGRPOTrainer

    monkeypatch.setenv("HF_TOKEN", FakeHub.token)
    args = VARGRPOConfig(
        output_dir=str(tmp_path / "run"), bf16=False, report_to="none", push_to_hub=True, hub_model_id="tester/run"
    )
    dataset = Dataset.from_dict({"prompt": ['the word "CAT"'] * 16})
    with serve(FakeHub()) as hub:
        hub.go_offline()
        with pytest.raises(httpx2.ConnectError) as error:  # the Hub's own error, with a note
            VARGRPOTrainer(tiny_model, _no_reward, args, dataset, processing_class=char_tokenizer)
    assert "Could not create the Hub repository 'tester/run' at https://huggingface.co" in error.value.__notes__[0]
