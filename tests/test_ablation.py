import json

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import load_script


ablation = load_script("benchmarks/ablation.py")
START = "<!-- ablation:start -->"


def _run(variant, seed, accuracies, seconds=(0.0, 30.0, 60.0)):
    points = [
        {"update": 10 * i, "train_seconds": s, "word_accuracy": a, "ned": (1 + a) / 2}
        for i, (a, s) in enumerate(zip(accuracies, seconds))
    ]
    return {"variant": variant, "seed": seed, "points": points}


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
    # the sample std (n - 1) of 0.5 and 0.6: 0.05 * sqrt(2)
    assert last["word_accuracy_std"] == pytest.approx(0.0707, abs=1e-4) and last["train_seconds"] == pytest.approx(
        60.0
    )
    assert summary["plain"]["curve"][1]["word_accuracy"] == pytest.approx(0.3)
    text = ablation.table(summary, 20)
    assert "| full (VMR+PANW+MP) | 2 | 0.550 +- 0.071 | +0.350 |" in text
    assert "| plain GRPO | 2 | 0.350 +- 0.071 | +0.150 |" in text and "base: word accuracy 0.200" in text
    assert "| 1.0 min | 0.550 (20, 1.0 min) |" in text  # the best point of the full method's mean curve
    assert ablation.summarize([_run("mp", 3, [0.2, 0.3])])["mp"]["curve"][-1]["word_accuracy_std"] == 0.0


@pytest.mark.parametrize(
    "option", ["--max_steps", "--eval_every", "--num_eval_prompts", "--eval_samples", "--num_prompts"]
)
def test_non_positive_counts_are_refused_by_name(option, capsys):
    with pytest.raises(SystemExit):
        ablation.main([option, "0"])
    assert f"{option} must be >= 1, got 0" in capsys.readouterr().err


def test_the_command_line_changes_config_fields_of_the_recipe_but_not_the_scripts_own(capsys):
    args, config, overrides = ablation.parse_args(["--learning_rate", "3e-5", "--eval_top_k", "None", "--seeds", "4"])
    assert overrides == {"learning_rate": 3e-5, "eval_top_k": None} and args.seeds == [4]
    assert (config.learning_rate, config.eval_top_k, config.max_steps, config.report_to) == (3e-5, None, 100, [])
    assert config.per_device_train_batch_size == 16 and config.num_generations == 8  # the rest is the recipe's
    # ours, not abbreviations of VARGRPOConfig's --report_to / --model_init_kwargs; max_steps and output_dir are no
    # change of the recipe (every run file records them)
    argv = ["--report", "r.md", "--model", "m", "--max_steps", "7", "--output_dir", "o"]
    args, config, overrides = ablation.parse_args(argv)
    assert (args.report, args.model, config.max_steps, config.output_dir, overrides) == ("r.md", "m", 7, "o", {})
    with pytest.raises(ValueError, match="learning_rte"):
        ablation.parse_args(["--learning_rte", "1"])
    bad_fields = (
        (["--panw_alpha", "0"], "--panw_alpha: set by --variants in this script"),
        (["--logging_steps", "5"], "--logging_steps: set by --eval_every in this script"),
        (["--report_to", "wandb"], "--report_to: fixed to none in this script"),
    )
    for argv, message in bad_fields:
        with pytest.raises(SystemExit):
            ablation.main(argv)
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ablation.main(["--variants", "plain", "vmr+mp"])
    err = capsys.readouterr().err  # named, with the variants there are
    assert "--variants: invalid choice: 'vmr+mp'" in err and all(name in err for name in ablation.VARIANTS)


def test_held_out_prompts_are_100_and_validation_prompts_200(capsys):
    assert ablation.EVAL_PROMPTS == {"heldout": 100, "validation": 200}
    with pytest.raises(SystemExit):
        ablation.main(["--num_eval_prompts", "150"])
    assert "there are 100 heldout prompts, got 150" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ablation.main(["--eval_prompts", "validation", "--num_eval_prompts", "250"])
    assert "there are 200 validation prompts, got 250" in capsys.readouterr().err


def test_validation_prompts_never_hold_a_held_out_word_and_are_not_the_held_out_prompts():
    prompts, targets = ablation.evaluation_prompts("validation", 50, word_length=3)
    assert len(prompts) == len(targets) == 50 and all(f'"{t}"' in p for p, t in zip(prompts, targets))
    assert len(set(targets)) == 50  # distinct words, the first of the fixed validation words
    assert targets == list(ablation.validation_words(3)[:50])
    heldout_prompts, heldout_targets = ablation.evaluation_prompts("heldout", 100, word_length=3)
    assert not set(targets) & set(heldout_targets) and len(heldout_prompts) == 100


def test_validation_runs_keep_the_validation_words_out_of_their_training_prompts():
    words = ablation.validation_words(3)
    assert len(words) == len(set(words)) == 200 and words[:3] == ablation.validation_words()[:3]
    args = ablation.AblationArguments(eval_prompts="validation", num_prompts=2000)
    trained = set(ablation.training_dataset(args, seed=0)["text"])
    assert not trained & set(words) and not trained & set(ablation.HELDOUT_WORDS)
    assert len(trained) > 600  # 2,000 draws cover nearly all of the 700 words left
    # held-out runs train on the recipe's prompts, validation words included (make train's data is unchanged)
    args.eval_prompts = "heldout"
    heldout_run = ablation.training_dataset(args, seed=0)
    assert heldout_run["text"] == ablation.make_text_render_dataset(2000, seed=0)["text"]
    assert set(heldout_run["text"]) & set(words)


def test_run_settings_follow_the_recipe_yaml(tmp_path, monkeypatch):
    def settings(*argv):
        return ablation.run_settings(*ablation.parse_args(["--max_steps", "1", "--eval_every", "1", *argv]))

    before = settings()
    assert before["num_prompts"] == 256 and settings("--num_prompts", "9")["num_prompts"] == 9  # the recipe's, or ours
    # one image per prompt is what runs made before --eval_samples existed: their settings (and files) still match
    assert "eval_samples" not in before
    assert settings("--eval_samples", "4")["eval_samples"] == 4
    assert before["model"] == "recipes/models/var-tiny-text-render" and len(before["recipe"]) == 16
    assert settings("--learning_rate", "3e-5")["overrides"] == {"learning_rate": 3e-5}
    changed = tmp_path / "recipe.yaml"
    changed.write_text(open(ablation.RECIPE_CONFIG).read() + "\nwarmup_steps: 7\n")
    monkeypatch.setattr(ablation, "RECIPE_CONFIG", str(changed))
    assert settings()["recipe"] != before["recipe"]
    # every run starts from the YAML; the recipe's own keys (num_heldout_prompts) are no VARGRPOConfig field
    assert ablation.parse_args([])[1].warmup_steps == 7 and settings()["overrides"] == {}


@pytest.mark.slow
def test_ablation_runs_resumes_and_writes_json_plot_and_table(tmp_path, capsys):
    report = tmp_path / "BENCHMARKS.md"
    report.write_text("# Benchmarks\n\nintro\n")
    argv = ["--variants", "plain", "full", "--seeds", "0", "--max_steps", "1", "--eval_every", "1"]
    argv += ["--num_eval_prompts", "2", "--output_dir", str(tmp_path / "runs"), "--results_dir", str(tmp_path)]
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
    assert first.startswith("# Benchmarks\n\nintro\n") and first.count(START) == 1

    # Started again: every run has its JSON, nothing is retrained, the table is replaced in place (not appended).
    capsys.readouterr()
    ablation.main(argv)
    assert capsys.readouterr().out.count("done already") == 2
    assert report.read_text().count(START) == 1
    assert full["settings"] == {
        "model": "recipes/models/var-tiny-text-render",
        "recipe": full["settings"]["recipe"],  # a hash of the recipe's YAML (see the test above)
        "num_prompts": 256,
        "max_steps": 1,
        "eval_every": 1,
        "eval_prompts": "heldout",
        "num_eval_prompts": 2,
        "overrides": {},
    }

    # A subset run (one variant) summarizes every run of the folder with its settings: the table keeps both variants.
    ablation.main(["--variants", "full", *argv[3:]])
    assert set(json.load(open(tmp_path / "ablation.json"))["summary"]) == {"plain", "full"}

    # A named study: its own files and its own table in the same report, next to the first.
    ablation.main([*argv, "--name", "ablation-long", "--report", str(tmp_path / "new.md")])
    ablation.main([*argv, "--name", "ablation-long"])
    assert (tmp_path / "ablation-long.json").exists() and (tmp_path / "ablation-long.png").exists()
    assert report.read_text().count("<!-- ablation-long:start -->") == 1 and START in report.read_text()
    assert "<!-- ablation-long:end -->" in (tmp_path / "new.md").read_text()  # a report that did not exist yet

    # Other settings in the same folder: refused by name, never mixed into the summary.
    with pytest.raises(SystemExit, match="max_steps': 1.*max_steps': 2.*another --output_dir"):
        ablation.main([*argv, "--max_steps", "2"])


def test_a_changed_field_reaches_every_run_with_the_variants_switches(tmp_path, monkeypatch):
    class Started(Exception):
        pass

    def train(trainer):
        config, reward = trainer.args, trainer.reward_funcs[0]
        raise Started(
            config.per_device_train_batch_size, config.seed, config.output_dir, config.panw_alpha, reward.backend
        )

    monkeypatch.setattr(ablation.VARGRPOTrainer, "train", train)
    argv = ["--variants", "plain", "--seeds", "3", "--per_device_train_batch_size", "32", "--panw_alpha", "0.6"]
    with pytest.raises(SystemExit):  # the variant sets the method's switches
        ablation.main([*argv, "--output_dir", str(tmp_path)])
    with pytest.raises(Started) as started:
        ablation.main([*argv[:-2], "--name", "confirm", "--output_dir", str(tmp_path)])
    output_dir = str(tmp_path / "checkpoints" / "plain-seed3")
    assert started.value.args == (32, 3, output_dir, 0.0, "tesseract")
    with pytest.raises(Started) as started:  # the reward's engine
        ablation.main([*argv[:-2], "--ocr_backend", "ppocr", "--output_dir", str(tmp_path / "ppocr")])
    assert started.value.args[-1] == "ppocr"


def test_table_names_the_settings_changed_from_the_recipe():
    summary = ablation.summarize([_run("full", 0, [0.4, 0.5, 0.6])])
    plain = ablation.table(summary, 20)
    changed = ablation.table(summary, 20, overrides={"per_device_train_batch_size": 32, "top_k": 8})
    assert "after 20 optimizer updates from the shipped checkpoint (base" in plain
    assert (
        "after 20 optimizer updates from the shipped checkpoint with the recipe changed by "
        "`per_device_train_batch_size=32`, `top_k=8` (base: word accuracy 0.400" in changed
    )
    assert "| full (VMR+PANW+MP) | 1 | 0.600 +- 0.000 | +0.200 |" in changed
    four_images = ablation.table(summary, 20, ablation.AblationArguments(eval_samples=4))
    assert "(1 seed, mean +- sample std, 4 images per prompt), after 20" in four_images


def test_evaluation_scores_every_prompt_eval_samples_times(monkeypatch):
    seen = {}

    def score_prompts(pipeline, prompts, targets, seed, **sampling):
        seen.update(prompts=prompts, targets=targets, sampling=sampling)
        return {"word_accuracy": 0.5, "ned": 0.75}

    monkeypatch.setattr(ablation, "score_prompts", score_prompts)
    monkeypatch.setattr(ablation, "VARPipeline", lambda model, tokenizer: None)
    args, config, _ = ablation.parse_args(["--num_eval_prompts", "2", "--eval_samples", "3", "--eval_every", "5"])
    evaluation = ablation.HeldoutEvaluation(None, config, args)
    evaluation.evaluate(torch.nn.Linear(1, 1), step=0)
    prompts, targets = ablation.evaluation_prompts("heldout", 2)
    assert seen["prompts"] == prompts * 3 and seen["targets"] == targets * 3
    assert seen["sampling"]["top_k"] == 2 and seen["sampling"]["guidance_scale"] == 3.0  # the recipe's eval sampling
    assert evaluation.points == [{"update": 0, "train_seconds": 0.0, "word_accuracy": 0.5, "ned": 0.75}]


def test_plot_draws_each_variant_in_its_colour_over_a_band():
    summary = ablation.summarize([_run("plain", 0, [0.2, 0.3, 0.4]), _run("plain", 1, [0.2, 0.5, 0.6])])
    summary |= ablation.summarize([_run("full", 0, [0.2, 0.6, 0.8])])
    image = ablation.plot(summary, "train_seconds", "Held-out word accuracy")
    assert image.size == (640, 420) and image.getpixel((0, 0)) == (255, 255, 255)
    colours = set(map(tuple, np.asarray(image).reshape(-1, 3).tolist()))
    assert ablation.COLORS["plain"] in colours and ablation.COLORS["full"] in colours
    assert ablation.COLORS["vmr"] not in colours  # no run, no curve
    # plain's std band: a pale tint of its colour between the curve and the band's edge (std 0.14 at the end)
    right, bottom, top = 640 - 15, 420 - 40, 30
    y_curve = round(bottom - (bottom - top) * 0.5)
    tint = image.getpixel((right - 2, y_curve + 12))
    assert tint != (255, 255, 255) and all(c > p for c, p in zip(tint, ablation.COLORS["plain"]) if p < 200)


def test_ocr_engines_are_run_settings_only_where_they_are_not_tesseract(capsys):
    def settings(*argv):
        return ablation.run_settings(*ablation.parse_args(list(argv)))

    # runs made before these options read and scored with Tesseract: their settings (and files) still match
    assert not {"ocr_backend", "eval_ocr_backends"} & settings().keys()
    assert settings("--ocr_backend", "tesseract", "--eval_ocr_backends", "tesseract") == settings()
    chosen = settings("--ocr_backend", "ppocr", "--eval_ocr_backends", "tesseract", "ppocr")
    assert (chosen["ocr_backend"], chosen["eval_ocr_backends"]) == ("ppocr", ["tesseract", "ppocr"])
    with pytest.raises(SystemExit):
        ablation.main(["--eval_ocr_backends", "tesseract", "paddle"])
    err = capsys.readouterr().err  # named, with the engines there are
    assert (
        "argument --eval_ocr_backends" in err and "invalid choice: 'paddle'" in err and "'tesseract', 'ppocr'" in err
    )


def test_evaluation_reads_the_same_images_with_every_engine_the_first_one_the_points_scores(monkeypatch):
    images = ["image-A", "image-B"]
    seen = {}

    def score_prompts(pipeline, prompts, targets, seed, ocr_backend, **sampling):
        seen["score_prompts"] = ocr_backend
        return {"word_accuracy": 0.5, "ned": 0.75, "images": images}

    _, targets = ablation.evaluation_prompts("heldout", 2)

    def read_images(read, backend):
        seen["read_images"] = (read, backend)
        return targets  # both read right

    monkeypatch.setattr(ablation, "score_prompts", score_prompts)
    monkeypatch.setattr(ablation, "read_images", read_images)
    monkeypatch.setattr(ablation, "VARPipeline", lambda model, tokenizer: None)
    args, config, _ = ablation.parse_args(["--num_eval_prompts", "2", "--eval_ocr_backends", "tesseract", "ppocr"])
    evaluation = ablation.HeldoutEvaluation(None, config, args)
    evaluation.evaluate(torch.nn.Linear(1, 1), step=0)
    assert seen == {"score_prompts": "tesseract", "read_images": (images, "ppocr")}
    (point,) = evaluation.points
    assert (point["word_accuracy"], point["ned"]) == (0.5, 0.75)
    assert point["by_ocr"] == {
        "tesseract": {"word_accuracy": 0.5, "ned": 0.75},
        "ppocr": {"word_accuracy": 1.0, "ned": 1.0},
    }


def test_table_adds_a_column_for_each_further_scoring_engine_and_names_the_rewards():
    runs = [_run("full", seed, [0.2, 0.4, 0.6]) for seed in (0, 1)]
    for run, ppocr in zip(runs, ([0.3, 0.5, 0.7], [0.3, 0.6, 0.9])):
        for point, accuracy in zip(run["points"], ppocr):
            point["by_ocr"] = {
                "tesseract": {"word_accuracy": point["word_accuracy"], "ned": point["ned"]},
                "ppocr": {"word_accuracy": accuracy, "ned": 0.9},
            }
    summary = ablation.summarize(runs)
    assert summary["full"]["curve"][-1]["by_ocr"]["ppocr"] == {"word_accuracy": pytest.approx(0.8), "ned": 0.9}
    args = ablation.AblationArguments(ocr_backend="ppocr", eval_ocr_backends=["tesseract", "ppocr"])
    text = ablation.table(summary, 20, args)
    assert (
        "The reward reads with PP-OCR, the scores with Tesseract (the last columns: the same images read by PP-OCR)."
        in text
    )
    assert "| best point (update, minutes) | read by PP-OCR (gain) |" in text
    assert "| 0.600 (20, 1.0 min) | 0.800 (+0.500) |" in text
    assert "reads with" not in ablation.table(summary, 20)  # Tesseract for both: as before these options
