import json
import os
import sys

import PIL.Image
import pytest


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import ablation  # noqa: E402


def _run(variant, seed, accuracies, seconds=(0.0, 30.0, 60.0)):
    points = [
        {"update": 10 * i, "train_seconds": s, "word_accuracy": a, "ned": (1 + a) / 2}
        for i, (a, s) in enumerate(zip(accuracies, seconds))
    ]
    return {"variant": variant, "seed": seed, "max_steps": 20, "points": points}


def test_variants_switch_exactly_one_addition_on_over_plain_grpo():
    plain = ablation.VARIANTS["plain"]
    assert plain == {"vmr_prefix_scales": 0, "panw_alpha": 0.0, "mask_propagation": False}
    for variant, key in (("vmr", "vmr_prefix_scales"), ("panw", "panw_alpha"), ("mp", "mask_propagation")):
        changed = {k for k in plain if ablation.VARIANTS[variant][k] != plain[k]}
        assert changed == {key} and ablation.VARIANTS[variant][key] == ablation.FULL[key]
    assert ablation.VARIANTS["full"] == ablation.FULL


def test_summary_averages_seeds_point_by_point_and_the_table_reports_the_gain():
    runs = [
        _run("plain", 0, [0.2, 0.25, 0.3]),
        _run("plain", 1, [0.2, 0.35, 0.4]),
        _run("full", 0, [0.2, 0.4, 0.5]),
        _run("full", 1, [0.2, 0.4, 0.6]),
    ]
    summary = ablation.summarize(runs)
    assert list(summary) == ["plain", "full"]  # the order of VARIANTS
    last = summary["full"]["curve"][-1]
    assert last["update"] == 20 and last["word_accuracy"] == pytest.approx(0.55)
    assert last["word_accuracy_std"] == pytest.approx(0.05) and last["train_seconds"] == pytest.approx(60.0)
    assert summary["plain"]["curve"][1]["word_accuracy"] == pytest.approx(0.3)
    text = ablation.table(summary, 20)
    assert "| full (VMR+PANW+MP) | 2 | 0.550 +- 0.050 | +0.350 |" in text
    assert "| plain GRPO | 2 | 0.350 +- 0.050 | +0.150 |" in text and "base: word accuracy 0.200" in text


@pytest.mark.slow
def test_ablation_runs_resumes_and_writes_json_plot_and_table(tmp_path, capsys):
    report = tmp_path / "BENCHMARKS.md"
    report.write_text("# Benchmarks\n\nintro\n")
    argv = ["--variants", "plain", "full", "--seeds", "0", "--max_steps", "1", "--eval_every", "1"]
    argv += ["--num_heldout", "2", "--output_dir", str(tmp_path / "runs"), "--results_dir", str(tmp_path)]
    argv += ["--report", str(report)]
    ablation.main(argv)
    result = json.load(open(tmp_path / "ablation.json"))
    assert set(result["summary"]) == {"plain", "full"}
    full = json.load(open(tmp_path / "runs" / "runs" / "full-seed0.json"))
    assert [p["update"] for p in full["points"]] == [0, 1]
    assert full["method"] == {"vmr_prefix_scales": None, "panw_alpha": 0.6, "mask_propagation": True}
    assert all(0 <= p["word_accuracy"] <= p["ned"] <= 1 for p in full["points"])
    assert PIL.Image.open(tmp_path / "ablation.png").size == (1280, 420)
    first = report.read_text()
    assert first.startswith("# Benchmarks\n\nintro\n") and first.count(ablation.MARKERS[0]) == 1

    # Started again: every run has its JSON, nothing is retrained, the table is replaced in place (not appended).
    capsys.readouterr()
    ablation.main(argv)
    assert capsys.readouterr().out.count("done already") == 2
    assert report.read_text().count(ablation.MARKERS[0]) == 1
