import json
import os
import stat
import subprocess
import sys

import PIL.Image
import pytest
from transformers import AutoModel

import trl_var


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACCELERATE = os.path.join(os.path.dirname(sys.executable), "accelerate")


def _run(args, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_recipe_help_lists_the_script_and_method_options(tmp_path):
    result = _run([sys.executable, "recipes/train_text_render.py", "--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    for option in ("--model_name_or_path", "--dataset_name", "--guidance_scale", "--num_generations", "--config"):
        assert option in result.stdout


@pytest.mark.slow
def test_recipe_trains_saves_and_resumes_under_accelerate_launch(tmp_path):
    output_dir = tmp_path / "run"
    command = [
        ACCELERATE,
        "launch",
        "--config_file",
        "recipes/accelerate_configs/cpu.yaml",
        "recipes/train_text_render.py",
        "--config",
        "recipes/configs/text_render_tiny.yaml",
        "--output_dir",
        str(output_dir),
        "--max_steps",
        "2",
        "--save_steps",
        "1",
        "--num_sample_prompts",
        "2",
        "--num_prompts",
        "8",
        "--num_heldout_prompts",
        "3",
    ]
    result = _run(command, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Held-out word accuracy (3 prompts):" in result.stdout
    heldout = json.load(open(output_dir / "before_after.json"))
    assert heldout["prompts"] == "held-out" and heldout["num_prompts"] == 3
    assert all(0 <= heldout[when]["word_accuracy"] <= heldout[when]["ned"] <= 1 for when in ("before", "after"))
    assert (output_dir / "checkpoint-2" / "model.safetensors").exists()
    model = AutoModel.from_pretrained(output_dir)
    assert isinstance(model, trl_var.VARForImageGeneration) and model.num_image_tokens == 130
    grid = PIL.Image.open(output_dir / "before_after.png")
    assert grid.size[0] == 2 * 160  # two sample prompts per row: before, then after

    # Started again with a higher step budget, it resumes from checkpoint-2 instead of starting over.
    result = _run(
        [*command[:-10], "--max_steps", "3", "--save_steps", "1", "--num_sample_prompts", "2", "--num_prompts", "8"]
        + ["--num_heldout_prompts", "3"],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Resuming from" in result.stderr and "checkpoint-2" in result.stderr
    assert (output_dir / "checkpoint-3").exists()


def test_the_summary_says_how_many_images_ocr_did_not_read_and_never_shows_a_score_of_nothing_read(tmp_path):
    # a tesseract that answers its version but no table of words: every read fails, before and after training
    (tmp_path / "bin").mkdir()
    fake = tmp_path / "bin" / "tesseract"
    fake.write_text(
        '#!/bin/sh\nif [ "$1" = "--version" ]; then echo "tesseract 5.3.0"; exit 0; fi\n'
        "printf 'Segmentation fault\\n' > \"$2.tsv\"\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    command = [sys.executable, "recipes/train_text_render.py", "--output_dir", str(tmp_path / "run")]
    command += ["--max_steps", "1", "--num_prompts", "2", "--num_generations", "2", "--per_device_train_batch_size"]
    command += ["2", "--vmr_prefix_scales", "0", "--num_sample_prompts", "0", "--num_heldout_prompts", "2"]
    command += ["--save_strategy", "no", "--disable_tqdm", "true"]
    result = subprocess.run(
        command,
        cwd=ROOT,
        env={**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (
        "Held-out word accuracy (2 prompts): not measured before, not measured after training (NED not measured -> "
        "not measured). OCR did not read 2 of 2 images before and 2 after training" in result.stdout
    )
    report = json.load(open(tmp_path / "run" / "before_after.json"))
    assert report["before"]["num_unread"] == report["after"]["num_unread"] == 2
