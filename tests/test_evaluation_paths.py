import os
import subprocess
import sys


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_same_model_given_by_a_relative_then_an_absolute_path_resumes_the_evaluation(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    output_dir = str(tmp_path / "eval")
    for model in ("recipes/models/var-tiny-text-render", os.path.join(ROOT, "recipes/models/var-tiny-text-render")):
        command = [sys.executable, "recipes/evaluate_text_render.py", "--model", model, "--num_samples", "1"]
        command += ["--num_grid_images", "0", "--output_dir", output_dir]
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
