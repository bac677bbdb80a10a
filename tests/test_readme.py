import os
import re


README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def test_readme_quickstart_runs_and_trains(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", open(README).read(), flags=re.DOTALL)
    quickstart, generation = blocks[0], blocks[1]
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(quickstart, "README.md quickstart", "exec"), namespace)
    assert namespace["trainer"].state.global_step == 5
    assert (tmp_path / "var-grpo-quickstart" / "model.safetensors").exists()
    exec(compile(generation, "README.md generation", "exec"), namespace)
    assert len(namespace["images"]) == 4 and namespace["images"][0].size == (32, 32)
