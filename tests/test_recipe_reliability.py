"""
The training recipe on bad inputs and reruns: every one either works or stops before sampling with a message naming
what is wrong. The recipe runs in this process (`main`), on the shipped tiny model with 2 images per step.
"""

import importlib.util
import json
import logging
import os
import subprocess
import sys

import pytest
from datasets import Dataset

from trl_var import VARGRPOConfig
from trl_var.trainer.run_folder import RunFolderError


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def recipe():
    spec = importlib.util.spec_from_file_location(
        "train_text_render", os.path.join(ROOT, "recipes/train_text_render.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _args(recipe, output_dir, *options):
    argv = [
        "--config", recipe.DEFAULT_CONFIG,
        "--output_dir", str(output_dir),
        "--max_steps", "1",
        "--num_prompts", "2",
        "--num_generations", "2",
        "--per_device_train_batch_size", "2",
        "--vmr_prefix_scales", "0",
        "--num_heldout_prompts", "0",
        "--num_sample_prompts", "1",
        "--save_steps", "1",
        "--disable_tqdm", "true",
        *options,
    ]  # fmt: skip
    return recipe.TrlParser((recipe.ScriptArguments, VARGRPOConfig)).parse_args_and_config(argv)


def _write_jsonl(path, rows):
    Dataset.from_list(rows).to_json(path, lines=True)
    return str(path)


def test_a_jsonl_file_without_quotes_trains_on_its_target_column_and_a_rerun_with_other_settings_is_refused(
    recipe, tmp_path, capsys
):
    data = _write_jsonl(tmp_path / "data.jsonl", [{"prompt": "a red sign", "text": "CAT"}] * 2)
    output_dir = tmp_path / "run"
    recipe.main(*_args(recipe, output_dir, "--dataset_name", data, "--reward_target_column", "text"))
    report = json.load(open(output_dir / "before_after.json"))
    assert report["prompts"] == "sample-prompt" and report["num_prompts"] == 1
    assert "Sample-prompt word accuracy (1 prompts)" in capsys.readouterr().out

    with pytest.raises(RunFolderError, match=r"learning_rate: 1e-05 -> 0\.0001.*delete .*run_settings\.json"):
        recipe.main(*_args(recipe, output_dir, "--dataset_name", data, "--learning_rate", "1e-4"))
    with pytest.raises(RunFolderError, match=r"reward_target_column: 'text' -> None"):
        recipe.main(*_args(recipe, output_dir, "--dataset_name", data))
    # the same data given by a relative path is the same run: it resumes (nothing left to train) instead
    os.chdir(tmp_path)
    try:
        recipe.main(*_args(recipe, output_dir, "--dataset_name", "data.jsonl", "--reward_target_column", "text"))
    finally:
        os.chdir(ROOT)


def test_targets_are_checked_before_any_sampling_and_zero_sample_prompts_skip_the_scoring(recipe, tmp_path):
    data = _write_jsonl(tmp_path / "data.jsonl", [{"prompt": "a red sign", "text": ""}, {"prompt": "x", "text": "A"}])
    with pytest.raises(ValueError, match=r"no double-quoted text in the prompt 'a red sign'"):
        recipe.main(*_args(recipe, tmp_path / "a", "--dataset_name", data))
    with pytest.raises(ValueError, match=r"Row 0 \('a red sign'\) has no text to render in the column 'text'"):
        recipe.main(*_args(recipe, tmp_path / "b", "--dataset_name", data, "--reward_target_column", "text"))

    output_dir = tmp_path / "c"
    recipe.main(*_args(recipe, output_dir, "--num_sample_prompts", "0"))
    assert (output_dir / "model.safetensors").exists() and not (output_dir / "before_after.json").exists()


def test_fewer_prompts_than_a_step_needs_fail_before_training(recipe, tmp_path):
    data = _write_jsonl(tmp_path / "one.jsonl", [{"prompt": 'a sign that says "CAT"'}])
    with pytest.raises(ValueError, match=r"The dataset has 1 prompt\(s\), but one step samples 2"):
        recipe.main(*_args(recipe, tmp_path / "run", "--dataset_name", data, "--per_device_train_batch_size", "4"))


def test_vmr_prefix_scales_out_of_range_fails_naming_the_range_before_anything_is_written(recipe, tmp_path):
    output_dir = tmp_path / "run"
    with pytest.raises(ValueError, match=r"`vmr_prefix_scales` is 9, but the model has 6 scales: .* use 1\.\.5"):
        recipe.main(*_args(recipe, output_dir, "--vmr_prefix_scales", "9"))
    assert not output_dir.exists()


def test_a_model_path_that_is_no_folder_is_named(recipe, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"No such local model folder: '/.*missing'"):
        recipe.main(*_args(recipe, tmp_path / "run", "--model_name_or_path", str(tmp_path / "missing")))


def test_resume_skips_a_checkpoint_a_kill_left_unfinished(recipe, tmp_path, caplog):
    output_dir = tmp_path / "run"
    recipe.main(*_args(recipe, output_dir, "--max_steps", "2", "--num_sample_prompts", "0"))
    os.remove(output_dir / "checkpoint-2" / "trainer_state.json")  # what a kill during the save leaves
    with caplog.at_level(logging.WARNING):
        recipe.main(*_args(recipe, output_dir, "--max_steps", "3", "--num_sample_prompts", "0"))
    assert f"Skipping the checkpoint {output_dir / 'checkpoint-2'}: no trainer_state.json" in caplog.text
    assert f"Resuming from {output_dir / 'checkpoint-1'}" in caplog.text
    assert json.load(open(output_dir / "checkpoint-3" / "trainer_state.json"))["global_step"] == 3


def test_a_second_training_into_a_busy_folder_fails_at_once_naming_the_other_process(recipe, tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderError, match=rf"Another training is writing to .*run: process {holder.pid}"):
            recipe.main(*_args(recipe, tmp_path / "run"))
    finally:
        holder.kill()
        holder.wait()


_HOLD = """
import sys, time
from trl_var.trainer.run_folder import lock_output_dir
lock_output_dir(sys.argv[1])
print("locked", flush=True)
time.sleep(60)
"""


def test_the_recipe_says_which_config_it_uses(recipe):
    argv, note = recipe.config_in_use(["--max_steps", "3"])
    assert argv[:2] == ["--config", recipe.DEFAULT_CONFIG] and "CPU demo" in note
    argv, note = recipe.config_in_use(["--dataset_name=data.jsonl"])
    assert argv == ["--dataset_name=data.jsonl"] and "VARGRPOConfig's defaults" in note and "--config" in note
