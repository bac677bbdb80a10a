"""
A tesseract that hangs or answers garbage costs the images it was reading, never the run: fake `tesseract` binaries
stand in for the faults.
"""

import json
import logging
import os
import stat
import subprocess
import sys
import time

import pytesseract
import pytest
from PIL import Image

from trl_var.rewards.ocr import OCROutputError, OCRReward, check_tesseract, read_text


HEADER = "level\tpage_num\tblock_num\tpar_num\tline_num\tword_num\tleft\ttop\twidth\theight\tconf\ttext"
VERSION = 'if [ "$1" = "--version" ]; then echo "tesseract 5.3.0"; exit 0; fi\n'
# pytesseract runs `tesseract <image> <output base> ... tsv` and reads `<output base>.tsv`
OUTPUTS = {
    "not utf-8": "printf '\\377\\376garbage\\n\\377\\n' > \"$2.tsv\"\n",
    "no header": "printf 'Segmentation fault\\nsomething went wrong\\n' > \"$2.tsv\"\n",
    "nan confidence": f"printf '{HEADER}\\n5\\t1\\t1\\t1\\t1\\t1\\t0\\t0\\t10\\t10\\tnan\\tCAT\\n' > \"$2.tsv\"\n",
}


def _fake_tesseract(tmp_path, monkeypatch, body):
    fake = tmp_path / "tesseract"
    fake.write_text("#!/bin/sh\n" + body)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(pytesseract.pytesseract, "tesseract_cmd", str(fake))
    return fake


@pytest.mark.parametrize("fault", sorted(OUTPUTS))
def test_output_that_is_no_table_of_words_raises_ocr_output_error_saying_what_came_back(tmp_path, monkeypatch, fault):
    _fake_tesseract(tmp_path, monkeypatch, VERSION + OUTPUTS[fault])
    with pytest.raises(OCROutputError) as error:
        read_text(Image.new("RGB", (64, 64), "white"), timeout=10)
    expected = {"not utf-8": r"not UTF-8 text: b'\xff\xfe", "no header": "no column 'text'", "nan confidence": "'CAT'"}
    assert expected[fault] in str(error.value)


@pytest.mark.parametrize("fault", sorted(OUTPUTS))
def test_a_garbage_read_scores_none_like_a_timeout_and_an_all_none_call_warns_loudly(
    tmp_path, monkeypatch, caplog, fault
):
    _fake_tesseract(tmp_path, monkeypatch, VERSION + OUTPUTS[fault])
    reward = OCRReward(timeout=10)
    with caplog.at_level(logging.WARNING):
        rewards = reward(prompts=['the word "CAT"'] * 2, completions=[Image.new("RGB", (64, 64), "white")] * 2)
    assert rewards == [None, None] and reward.last_words == [[], []]
    assert "Tesseract" in caplog.text and "scores None" in caplog.text
    assert "NONE of the 2 images of this call was read" in caplog.text


def test_a_tesseract_that_hangs_on_version_fails_the_start_within_the_timeout(tmp_path, monkeypatch):
    fake = _fake_tesseract(tmp_path, monkeypatch, "sleep 30\n")
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=rf"`{fake} --version` did not answer within 0.5 s"):
        check_tesseract(timeout=0.5)
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("fault", ["hang", "not utf-8"])
def test_the_evaluation_recipe_survives_a_hung_or_garbage_tesseract_and_writes_every_sample(tmp_path, fault):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    (tmp_path / "bin").mkdir()
    fake = tmp_path / "bin" / "tesseract"
    fake.write_text("#!/bin/sh\n" + VERSION + ("sleep 30\n" if fault == "hang" else OUTPUTS[fault]))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "recipes/evaluate_text_render.py", "--num_samples", "2", "--batch_size", "2"]
    command += ["--ocr_timeout", "1", "--num_grid_images", "0", "--output_dir", str(tmp_path / "eval")]
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in open(tmp_path / "eval" / "samples.jsonl")]
    assert len(records) == 2
    expected = "within 1.0 s" if fault == "hang" else "not UTF-8 text"
    assert expected in result.stderr and "read empty" in result.stderr
