import json
import logging
import math
import os
import subprocess
import sys
import zipfile

import evaluate
import huggingface_hub
import PIL.Image
import pytest
import torch
from conftest import load_script, tiny_var_config

from trl_var import VARForImageGeneration, VARPipeline, build_char_tokenizer
from trl_var.data import extract_quoted_spans, load_cvtg2k, load_prompt_dataset, make_text_render_dataset
from trl_var.evaluation import aggregate_results, evaluate_text_rendering, format_results_table, load_pipeline
from trl_var.metrics import CLIP_SCORE, NED, WORD_ACCURACY, clip_score_from_embeddings, functional, score_words


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------------------------------------------------
# Fixtures built in tmp_path: CVTG-2K's published layout, a tiny VAR model, a tiny CLIP model
# ---------------------------------------------------------------------------------------------------------------------


def _cvtg_prompt(folder: str, num_regions: int, row: int) -> tuple[str, list[str]]:
    words = [f"{folder[-5:].upper()}{num_regions}{row}{k}" for k in range(num_regions - 1)]
    prompt = "A street with " + ", ".join(f"a sign that says '{word}'" for word in words)
    return prompt + ", and a car's door with 'Exit Here'.", [*words, "Exit Here"]


def write_cvtg_layout(root, style_folder: str = "CVTG-style") -> None:
    """CVTG-2K's layout, 2 good rows per file; CVTG/2*.json add 4 malformed rows, CVTG/3.json one without annotations."""
    for folder in ("CVTG", style_folder):
        os.makedirs(root / folder)
        for num_regions in (2, 3, 4, 5):
            items = []
            for row in range(2):
                prompt, targets = _cvtg_prompt(folder, num_regions, row)
                items.append(
                    {
                        "index": row,
                        "prompt": prompt,
                        "carrier_list": ["sign"] * (num_regions - 1) + ["door"],
                        "sentence_list": [f"a sign that says '{target}'" for target in targets],
                    }
                )
            if folder == "CVTG" and num_regions == 2:
                items += [
                    {"index": 2, "prompt": "A sign without any quoted text.", "carrier_list": [], "sentence_list": []},
                    {"index": 3, "prompt": "   ", "carrier_list": [], "sentence_list": []},
                    {"index": 4, "carrier_list": [], "sentence_list": []},
                    {"index": "five", "prompt": "A sign that says 'BAD'.", "carrier_list": [], "sentence_list": []},
                ]
            fine = [dict(item) for item in items]
            if folder == "CVTG" and num_regions == 3:
                del fine[1]["sentence_list"]
            (root / folder / f"{num_regions}.json").write_text(json.dumps({"data_list": fine}))
            (root / folder / f"{num_regions}_combined.json").write_text(json.dumps({"data_list": items}))


def zip_cvtg_layout(folder, zip_path) -> None:
    """The folder zipped under a top-level `CVTG-2K/`, with the resource forks macOS zips carry."""
    with zipfile.ZipFile(zip_path, "w") as archive:
        for dirpath, _, names in os.walk(folder):
            for name in names:
                path = os.path.join(dirpath, name)
                archive.write(path, os.path.join("CVTG-2K", os.path.relpath(path, folder)))
        archive.writestr("__MACOSX/CVTG/._2_combined.json", b"\x00\x05\x16\x07 not json")


@pytest.fixture
def cvtg_folder(tmp_path):
    write_cvtg_layout(tmp_path / "CVTG-2K")
    return tmp_path / "CVTG-2K"


@pytest.fixture(scope="module")
def tiny_pipeline():
    tokenizer = build_char_tokenizer()
    torch.manual_seed(0)
    model = VARForImageGeneration(tiny_var_config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id))
    return VARPipeline(model.eval(), tokenizer)


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    """A randomly initialized CLIP (16-dim, one layer per tower) saved with a character tokenizer and image processor."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    tokenizer = build_char_tokenizer()
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 64,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.eos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        },
        vision_config={
            "image_size": 32,
            "patch_size": 8,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
        },
        projection_dim=8,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-clip")
    CLIPModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return str(path)


# ---------------------------------------------------------------------------------------------------------------------
# CVTG-2K and prompt datasets
# ---------------------------------------------------------------------------------------------------------------------


def test_quoted_spans_read_cvtg_single_quotes_and_leave_apostrophes_alone():
    prompt = "A bookstore with a sign that says 'READ', a car's door with 'Exit Here' and a poster: 'Don't Stop'."
    assert extract_quoted_spans(prompt) == ["READ", "Exit Here", "Don't Stop"]
    assert extract_quoted_spans("the word \"ACE\" next to 'not this'") == ["ACE"]  # double quotes win
    assert extract_quoted_spans("the players' lounge") == []


def test_cvtg2k_folder_loads_every_file_and_reports_malformed_rows(cvtg_folder, caplog):
    with caplog.at_level(logging.WARNING, logger="trl_var.data.cvtg"):
        dataset = load_cvtg2k(cvtg_folder)

    assert len(dataset) == 2 * 4 * 2  # subsets x region counts x good rows; the 4 malformed rows are skipped
    assert set(dataset.column_names) == {
        "prompt",
        "targets",
        "num_regions",
        "subset",
        "index",
        "carrier_list",
        "sentence_list",
    }
    first = dataset[0]
    assert first["subset"] == "CVTG" and first["num_regions"] == 2 and first["index"] == 0
    assert first["targets"] == ["CVTG200", "Exit Here"] and first["carrier_list"] == ["sign", "door"]
    assert dataset["subset"][-1] == "CVTG-style" and dataset["num_regions"][-1] == 5
    assert all(len(targets) == num for targets, num in zip(dataset["targets"], dataset["num_regions"], strict=True))

    (message,) = [record.getMessage() for record in caplog.records]
    assert "Skipped 4 of 6 rows of CVTG/2_combined.json" in message
    assert "2 missing fields ([4, 'five'])" in message
    assert "1 empty prompt ([3])" in message and "1 no quoted text ([2])" in message


def test_cvtg2k_zip_reads_like_the_folder_whatever_the_folder_case(tmp_path):
    write_cvtg_layout(tmp_path / "layout", style_folder="CVTG-Style")  # TextCrafter's scripts spell it this way
    zip_cvtg_layout(tmp_path / "layout", tmp_path / "CVTG-2K.zip")

    from_zip = load_cvtg2k(tmp_path / "CVTG-2K.zip", subset="cvtg-style", region_counts=[3, 5])
    from_folder = load_cvtg2k(tmp_path / "layout", subset="CVTG-style", region_counts=[3, 5])
    assert from_zip.to_list() == from_folder.to_list()
    assert from_zip["subset"] == ["CVTG-style"] * 4 and from_zip["num_regions"] == [3, 3, 5, 5]


def test_cvtg2k_hub_id_goes_through_snapshot_download_then_the_same_zip_reader(tmp_path, cvtg_folder, monkeypatch):
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    zip_cvtg_layout(cvtg_folder, snapshot / "CVTG-2K.zip")  # the Hub repository holds the zip as published
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs["repo_type"]))
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    dataset = load_cvtg2k("dnkdnk/CVTG-2K", subset="CVTG", region_counts=[4])
    assert calls == [("dnkdnk/CVTG-2K", "dataset")]
    assert dataset.to_list() == load_cvtg2k(cvtg_folder, subset="CVTG", region_counts=[4]).to_list()


def test_cvtg2k_fine_files_also_require_the_annotations(cvtg_folder):
    assert len(load_cvtg2k(cvtg_folder, subset="CVTG", region_counts=[3])) == 2
    fine = load_cvtg2k(cvtg_folder, subset="CVTG", region_counts=[3], split_files="fine")
    assert fine["index"] == [0]  # row 1 of CVTG/3.json has no sentence_list


def test_cvtg2k_errors_say_where_they_looked(tmp_path, cvtg_folder):
    with pytest.raises(FileNotFoundError, match=r"No CVTG-2K folder or zip at .*missing\.zip"):
        load_cvtg2k(tmp_path / "missing.zip")
    # offline (HF_HUB_OFFLINE=1) with an empty cache: the Hub id cannot be fetched
    with pytest.raises(FileNotFoundError, match=r"Hub dataset 'dnkdnk/CVTG-2K' could not be fetched .*CVTG-2K\.zip"):
        load_cvtg2k("dnkdnk/CVTG-2K", cache_dir=tmp_path / "hub-cache")
    with pytest.raises(FileNotFoundError, match=r"CVTG/6_combined\.json is not in .*found there: \['cvtg-style/2"):
        load_cvtg2k(cvtg_folder, region_counts=[6])
    with pytest.raises(ValueError, match="subset"):
        load_cvtg2k(cvtg_folder, subset="CVTG-hard")


def test_prompt_dataset_targets_come_from_a_column_or_from_the_quotes(tmp_path, caplog):
    toy = make_text_render_dataset(4, seed=0)
    toy.to_json(tmp_path / "toy.jsonl")
    dataset = load_prompt_dataset(tmp_path / "toy.jsonl", target_column="text")
    assert dataset["targets"] == [[word] for word in toy["text"]] and dataset["num_regions"] == [1] * 4
    assert dataset["prompt"] == toy["prompt"]

    (tmp_path / "prompts.csv").write_text(
        "prompt\n\"A sign that says 'OPEN' and a door with 'PUSH'\"\nno quotes here\n\"   \"\n"
    )
    with caplog.at_level(logging.WARNING, logger="trl_var.data.cvtg"):
        dataset = load_prompt_dataset(tmp_path / "prompts.csv")
    assert dataset["targets"] == [["OPEN", "PUSH"]] and dataset["num_regions"] == [2]
    assert "Skipped 2 of 3 rows" in caplog.text and "1 no target text ([1])" in caplog.text

    with pytest.raises(FileNotFoundError, match=r"No dataset file or folder at .*nothing\.jsonl"):
        load_prompt_dataset(tmp_path / "nothing.jsonl")
    with pytest.raises(FileNotFoundError, match=r"'nobody/no-such-prompts' is not a local file .* Hub dataset"):
        load_prompt_dataset("nobody/no-such-prompts")


# ---------------------------------------------------------------------------------------------------------------------
# Metrics, on hand-computed cases
# ---------------------------------------------------------------------------------------------------------------------


def test_word_scores_follow_the_cvtg2k_definitions():
    # case-insensitive: every target word read
    assert score_words("open 24 HOURS", ["OPEN", "24 hours"]) == functional.WordScores(3, 3, (1.0, 1.0, 1.0))
    # "hours" read as "hour": not correct; 1 - Lev/max = 1 - 1/5
    assert score_words("OPEN 24 HOUR", ["Open", "24 Hours"]).similarities == (1.0, 1.0, 0.8)
    # punctuation is kept: "vs." read as "vs" is wrong; 1 - 1/3
    vs = score_words(["team", "a", "vs", "b"], ["Team A vs. Team B"])
    assert vs.num_correct == 4 and vs.num_words == 5 and vs.similarities[2] == pytest.approx(2 / 3)
    # one read matches every identical target (no one-to-one matching)
    assert score_words("team", ["team team"]).num_correct == 2
    # nothing read: one empty read, similarity 0
    assert score_words([], ["OPEN", "SALE"]) == functional.WordScores(2, 0, (0.0, 0.0))
    # the pairing is difflib's (ratio 0.75 for xabcx over 0.67 for abd), not the smallest edit distance
    assert score_words(["abd", "xabcx"], ["abc"]).similarities == (pytest.approx(0.6),)
    with pytest.raises(ValueError, match="no words"):
        score_words("OPEN", [" "])


def test_word_accuracy_and_ned_pool_target_words_not_images():
    predictions = ["SALE", "HOT DOG"]
    references = [["SALE"], ["HOT DOGS"]]  # image 1: sale read; image 2: hot read, dogs read as dog (1 - 1/4)
    assert functional.word_accuracy(predictions, references) == 2 / 3  # an image mean would give (1 + 1/2) / 2
    assert functional.ned(predictions, references) == (1 + 1 + 0.75) / 3  # an image mean would give (1 + 0.875) / 2


def test_evaluate_modules_load_offline_by_path_and_agree_with_the_functions():
    references = [["Open", "24 Hours"], ["SALE"]]
    word_accuracy = evaluate.load(WORD_ACCURACY)
    ned = evaluate.load(NED)
    # the OCR text of each image, or the list of words read (one kind per call)
    for predictions in (["OPEN 24 HOUR", "sale today"], [["OPEN", "24", "HOUR"], ["sale", "today"]]):
        assert word_accuracy.compute(predictions=predictions, references=references) == {
            "word_accuracy": 0.75,
            "num_words": 4,
            "num_correct": 3,
        }
        result = ned.compute(predictions=predictions, references=references)
        assert result == {"ned": pytest.approx(3.8 / 4), "num_words": 4}  # 1, 1, 1 - 1/5 and 1
        assert result["ned"] == functional.ned(predictions, references)


def test_clip_score_is_two_and_a_half_times_the_clipped_cosine():
    image_embeds = torch.tensor([[1.0, 0.0], [1.0, 0.0], [3.0, 4.0]])
    text_embeds = torch.tensor([[1.0, 1.0], [-1.0, 0.0], [6.0, 8.0]])
    scores = clip_score_from_embeddings(image_embeds, text_embeds)
    assert scores.tolist() == pytest.approx([2.5 / math.sqrt(2), 0.0, 2.5])  # 45 degrees; opposite clipped; same
    assert clip_score_from_embeddings(image_embeds, text_embeds, weight=1.0)[0] == pytest.approx(1 / math.sqrt(2))


def test_clip_score_module_scores_images_with_a_local_clip(tiny_clip_dir):
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    images = [PIL.Image.new("RGB", (40, 32), "red"), PIL.Image.new("RGB", (32, 32), "blue")]
    prompts = ["a red square", "a blue square with the word 'SKY'"]
    result = evaluate.load(CLIP_SCORE).compute(
        predictions=images, references=prompts, model_name_or_path=tiny_clip_dir, device="cpu"
    )

    # the same score by hand: "A photo depicts " + prompt, projected embeddings, 2.5 * max(cos, 0)
    model = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_clip_dir)
    pixel_values = AutoImageProcessor.from_pretrained(tiny_clip_dir)(images=images, return_tensors="pt")[
        "pixel_values"
    ]
    text = tokenizer(["A photo depicts " + prompt for prompt in prompts], padding=True, return_tensors="pt")
    with torch.no_grad():
        image_embeds = model.get_image_features(pixel_values=pixel_values).pooler_output
        text_embeds = model.get_text_features(input_ids=text["input_ids"], attention_mask=text["attention_mask"])
    cosine = torch.nn.functional.cosine_similarity(image_embeds, text_embeds.pooler_output)
    expected = (2.5 * cosine.clamp(min=0)).tolist()
    assert result["clip_scores"] == pytest.approx(expected, abs=1e-5)
    assert result["clip_score"] == pytest.approx(sum(expected) / 2, abs=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# The evaluation: table, resume, errors
# ---------------------------------------------------------------------------------------------------------------------


def test_table_rows_are_region_counts_and_the_average_pools_all_words():
    records = [
        {"num_regions": 3, "targets": ["A", "B", "C"], "ocr_words": ["a", "b", "c"], "clip_score": 0.9},
        {"num_regions": 2, "targets": ["SALE", "OPEN"], "ocr_words": ["sale"], "clip_score": 0.7},
        {"num_regions": 2, "targets": ["NEW", "HOT"], "ocr_words": [], "clip_score": 0.8},
    ]
    table = aggregate_results(records)
    assert list(table) == ["2", "3", "average"]
    assert table["2"]["word_accuracy"] == 0.25 and table["3"]["word_accuracy"] == 1.0
    assert table["average"]["word_accuracy"] == 4 / 7  # pooled words, not (0.25 + 1.0) / 2
    assert table["2"]["ned"] == 0.25  # sale 1; open~sale, new~"", hot~"" all 0
    assert table["average"]["clip_score"] == pytest.approx(0.8) and table["2"]["num_samples"] == 2
    assert aggregate_results([{**records[0], "clip_score": None}])["average"]["clip_score"] is None

    markdown = format_results_table({"rows": table, "config": {"clip_model": "clip"}})
    assert markdown.splitlines()[0] == "| regions | images | words | Word Acc | NED | CLIPScore |"
    assert markdown.splitlines()[-1] == "| average | 3 | 7 | 0.5714 | 0.5714 | 0.8000 |"


def test_evaluation_resumes_after_a_crash_with_the_same_images(tmp_path, cvtg_folder, tiny_pipeline, tiny_clip_dir):
    dataset = load_cvtg2k(cvtg_folder, subset="CVTG", region_counts=[2, 3])
    settings = {"batch_size": 2, "guidance_scale": 1.0, "clip_model": tiny_clip_dir, "num_grid_images": 3}
    results = evaluate_text_rendering(tiny_pipeline, dataset, tmp_path / "run", **settings)

    assert list(results["rows"]) == ["2", "3", "average"]
    assert results["rows"]["average"]["num_samples"] == 4 and results["rows"]["average"]["num_words"] == 14
    assert 0 <= results["rows"]["average"]["clip_score"] <= 2.5
    lines = (tmp_path / "run" / "samples.jsonl").read_text().splitlines()
    assert [json.loads(line)["row"] for line in lines] == [0, 1, 2, 3]
    assert json.loads(lines[3])["targets"] == ["CVTG310", "CVTG311", "Exit Here"]
    with PIL.Image.open(tmp_path / "run" / "samples.png") as grid:
        assert grid.size == (3 * 256, 256 + 4 * 12 + 4)  # 3 samples, captions of 4 lines
    first_image = (tmp_path / "run" / "images" / "000003.png").read_bytes()

    # A crash while writing row 3: rows 0-2 are kept, the cut line is dropped, row 3's block (rows 2-3) is sampled
    # again with its own seed and gives the same image.
    (tmp_path / "run" / "samples.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][:25])
    (tmp_path / "run" / "images" / "000003.png").unlink()
    resumed = evaluate_text_rendering(tiny_pipeline, dataset, tmp_path / "run", **settings)
    assert resumed["rows"] == results["rows"]
    assert (tmp_path / "run" / "samples.jsonl").read_text().splitlines()[:3] == lines[:3]
    assert len((tmp_path / "run" / "samples.jsonl").read_text().splitlines()) == 4
    assert (tmp_path / "run" / "images" / "000003.png").read_bytes() == first_image

    # A folder of an older version, which did not record the model revision: resumed, and the setting recorded.
    config_path = tmp_path / "run" / "evaluation_config.json"
    config = json.loads(config_path.read_text())
    del config["model_revision"]
    config_path.write_text(json.dumps(config))
    assert evaluate_text_rendering(tiny_pipeline, dataset, tmp_path / "run", **settings)["rows"] == results["rows"]
    assert json.loads(config_path.read_text())["model_revision"] is None  # a model built in memory

    with pytest.raises(ValueError, match=r"other settings \(seed: 0 then, 1 now\)"):
        evaluate_text_rendering(tiny_pipeline, dataset, tmp_path / "run", **settings, seed=1)


def test_missing_model_errors_say_where_they_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"No model folder at .*no-model"):
        load_pipeline(tmp_path / "no-model")
    with pytest.raises(
        FileNotFoundError, match=r"'nobody/no-such-model': not a local folder .* nor a .* Hub repository"
    ):
        load_pipeline("nobody/no-such-model")


def _run_recipe(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    command = [sys.executable, "recipes/evaluate_text_render.py", *map(str, args)]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_recipe_evaluates_a_toy_set_writes_the_table_and_resumes(tmp_path, tiny_pipeline):
    tiny_pipeline.save_pretrained(tmp_path / "model")
    make_text_render_dataset(5, seed=0).to_json(tmp_path / "toy.jsonl")
    output_dir = tmp_path / "eval"
    args = ["--model", tmp_path / "model", "--dataset", tmp_path / "toy.jsonl", "--dataset_format", "prompts"]
    args += ["--target_column", "text", "--batch_size", 2, "--num_grid_images", 4, "--output_dir", output_dir]

    result = _run_recipe(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| regions | images | words | Word Acc | NED | CLIPScore |" in result.stdout
    assert "CLIPScore skipped" in result.stdout
    results = json.loads((output_dir / "results.json").read_text())
    assert list(results["rows"]) == ["1", "average"]  # one quoted word per toy prompt
    assert results["rows"]["average"]["num_samples"] == 5 and results["rows"]["average"]["clip_score"] is None
    assert results["config"]["ocr_psm"] == 7 and results["config"]["guidance_scale"] == 5.0
    records = [json.loads(line) for line in (output_dir / "samples.jsonl").read_text().splitlines()]
    assert [record["row"] for record in records] == list(range(5))
    assert results["rows"]["average"]["word_accuracy"] == functional.word_accuracy(
        [record["ocr_words"] for record in records], [record["targets"] for record in records]
    )
    assert (output_dir / "results.md").read_text().startswith("| regions |")
    with PIL.Image.open(output_dir / "samples.png") as grid:
        assert grid.size[0] == 4 * 256

    # Run again: every sample is found in samples.jsonl, nothing is generated or scored again.
    samples_before = (output_dir / "samples.jsonl").read_bytes()
    image_times = {path: os.stat(path).st_mtime_ns for path in (output_dir / "images").iterdir()}
    result = _run_recipe(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Resuming: 5 of 5 samples already done" in result.stderr
    assert (output_dir / "samples.jsonl").read_bytes() == samples_before
    assert {path: os.stat(path).st_mtime_ns for path in (output_dir / "images").iterdir()} == image_times
    assert json.loads((output_dir / "results.json").read_text()) == results

    # The model retrained into the same folder: its samples are not reused as if they were the new model's.
    torch.manual_seed(1)
    retrained = VARForImageGeneration(tiny_pipeline.model.config)
    VARPipeline(retrained, tiny_pipeline.tokenizer).save_pretrained(tmp_path / "model")
    result = _run_recipe(*args)
    assert result.returncode != 0 and "holds an evaluation with other settings (model_revision: " in result.stderr


def test_read_images_reads_renders_in_order():
    import random

    from trl_var.data.render import RenderStyle, render_word
    from trl_var.evaluation import read_images

    rng = random.Random(0)
    words = ["CAT", "MAX", "SHE", "ARK"]
    assert read_images([render_word(word, RenderStyle(), rng) for word in words], num_workers=2) == words


def test_score_prompts_is_seeded_and_scores_what_tesseract_read():
    from trl_var.data import make_heldout_dataset
    from trl_var.evaluation import score_prompts

    pipeline = load_pipeline(os.path.join(ROOT, "recipes", "models", "var-tiny-text-render"), device="cpu")
    heldout = make_heldout_dataset().select(range(6))
    prompts, targets = list(heldout["prompt"]), list(heldout["text"])
    sampling = {"guidance_scale": 3.0, "top_k": 2, "top_p": 0.9}
    first = score_prompts(pipeline, prompts, targets, batch_size=4, seed=7, **sampling)
    again = score_prompts(pipeline, prompts, targets, batch_size=4, seed=7, **sampling)
    assert first["predictions"] == again["predictions"] and len(first["images"]) == 6
    assert [image.tobytes() for image in first["images"]] == [image.tobytes() for image in again["images"]]
    # one target word per image, correct when it is among the words read (case-insensitive)
    found = sum(target.lower() in read.lower().split() for read, target in zip(first["predictions"], targets))
    assert first["word_accuracy"] == pytest.approx(found / len(targets))
    other = score_prompts(pipeline, prompts, targets, batch_size=4, seed=8, **sampling)
    assert [image.tobytes() for image in other["images"]] != [image.tobytes() for image in first["images"]]


def test_recipe_defaults_pair_each_model_with_a_dataset_it_can_be_scored_on(tmp_path, tiny_pipeline):
    recipe = load_script("recipes/evaluate_text_render.py")
    CVTG2K_REPO_ID, HELDOUT_PROMPTS = recipe.CVTG2K_REPO_ID, recipe.HELDOUT_PROMPTS
    SHIPPED_MODEL = recipe.SHIPPED_MODEL
    EvaluationArguments, resolve_dataset = recipe.EvaluationArguments, recipe.resolve_dataset

    # No options: the shipped 64 px one-word model on its held-out prompts, not on CVTG-2K's 2-5 regions at 1024 px.
    assert resolve_dataset(EvaluationArguments()) == (HELDOUT_PROMPTS, "prompts")
    assert resolve_dataset(EvaluationArguments(model=SHIPPED_MODEL + os.sep)) == (HELDOUT_PROMPTS, "prompts")
    assert resolve_dataset(EvaluationArguments(dataset_format="cvtg2k")) == (CVTG2K_REPO_ID, "cvtg2k")
    # A model you name: CVTG-2K, the benchmark, unless you name a dataset.
    tiny_pipeline.save_pretrained(tmp_path / "model")
    assert resolve_dataset(EvaluationArguments(model=str(tmp_path / "model"))) == (CVTG2K_REPO_ID, "cvtg2k")
    assert resolve_dataset(EvaluationArguments(model="your-org/var-7b")) == (CVTG2K_REPO_ID, "cvtg2k")
    named = EvaluationArguments(model="your-org/var-7b", dataset="prompts.jsonl", dataset_format="prompts")
    assert resolve_dataset(named) == ("prompts.jsonl", "prompts")
    assert resolve_dataset(EvaluationArguments(dataset="data/cvtg2k.zip")) == ("data/cvtg2k.zip", "cvtg2k")
    with pytest.raises(ValueError, match=r"`--dataset_format prompts` needs `--dataset`"):
        resolve_dataset(EvaluationArguments(model="your-org/var-7b", dataset_format="prompts"))


# ---------------------------------------------------------------------------------------------------------------------
# The two evaluation paths share their seeding, OCR and sampling settings
# ---------------------------------------------------------------------------------------------------------------------


def test_a_block_is_seeded_by_the_seed_and_its_place_alone():
    from trl_var.evaluation import block_generator

    draw = torch.rand(4, generator=block_generator(7, 2, "cpu"))
    assert torch.equal(draw, torch.rand(4, generator=torch.Generator().manual_seed(7 * 1_000_003 + 2)))
    assert not torch.equal(draw, torch.rand(4, generator=block_generator(7, 3, "cpu")))
    assert not torch.equal(draw, torch.rand(4, generator=block_generator(8, 2, "cpu")))


def test_an_image_tesseract_does_not_read_in_time_counts_as_read_empty(monkeypatch, caplog):
    from trl_var import evaluation

    seen = []

    def never_done(image, **kwargs):
        seen.append((kwargs["upscale"], kwargs["psm"], kwargs["timeout"]))
        raise TimeoutError

    monkeypatch.setattr(evaluation, "read_text", never_done)
    with caplog.at_level(logging.WARNING, logger="trl_var.evaluation"):
        assert evaluation.read_words(PIL.Image.new("RGB", (8, 8)), psm=11, upscale=2, timeout=5) == []
        assert evaluation.read_images([PIL.Image.new("RGB", (8, 8))], psm=7, timeout=3) == [""]
    assert seen == [(2, 11, 5), (None, 7, 3)]
    assert "did not read an image within 5 s: counted as read empty" in caplog.text


def test_both_evaluation_paths_draw_the_same_images_and_read_them_with_a_timeout(tmp_path, tiny_pipeline, monkeypatch):
    from datasets import Dataset

    from trl_var import evaluation
    from trl_var.models import SAMPLING_ARGUMENTS

    timeouts = []
    monkeypatch.setattr(evaluation, "read_text", lambda image, **kwargs: timeouts.append(kwargs["timeout"]) or [])
    prompts = ['the word "AB"', 'the word "CD"', 'the word "EF"']
    dataset = Dataset.from_dict({"prompt": prompts, "targets": [["AB"], ["CD"], ["EF"]], "num_regions": [1, 1, 1]})
    settings = {"batch_size": 2, "seed": 3, "ocr_timeout": 7, "top_k": 0}
    results = evaluate_text_rendering(tiny_pipeline, dataset, tmp_path, num_grid_images=0, **settings)
    assert timeouts == [7, 7, 7]
    # the settings not given are the model's generation config, and are recorded
    assert {name: results["config"][name] for name in SAMPLING_ARGUMENTS} == {
        "guidance_scale": 5.0,
        "guidance_schedule": "constant",
        "temperature": 1.0,
        "top_k": 0,
        "top_p": 0.9,
    }
    scored = evaluation.score_prompts(tiny_pipeline, prompts, [["AB"], ["CD"], ["EF"]], **settings)
    for row, image in enumerate(scored["images"]):
        with PIL.Image.open(tmp_path / "images" / f"{row:06d}.png") as saved:
            assert saved.convert("RGB").tobytes() == image.tobytes()
