import json
import logging

import pytest
from datasets import Dataset, DatasetDict

from trl_var.data.cvtg import load_cvtg2k
from trl_var.data.loading import load_dataset_from


ROWS = [{"prompt": 'a sign that says "CAT"', "text": "CAT"}, {"prompt": 'a sign that says "DOG"', "text": "DOG"}]


@pytest.mark.parametrize("extension", [".jsonl", ".json", ".csv", ".parquet"])
def test_a_data_file_loads_whatever_its_type(tmp_path, extension):
    path = tmp_path / f"data{extension}"
    dataset = Dataset.from_list(ROWS)
    if extension == ".jsonl":
        dataset.to_json(path, lines=True)
    elif extension == ".json":
        path.write_text(json.dumps(ROWS))
    elif extension == ".csv":
        dataset.to_csv(path, index=False)
    else:
        dataset.to_parquet(path)
    assert load_dataset_from(str(path)).to_list() == ROWS


def test_folders_of_files_and_saved_datasets_load_and_a_missing_split_is_named(tmp_path):
    Dataset.from_list(ROWS).to_json(tmp_path / "files" / "train.jsonl", lines=True)
    assert load_dataset_from(tmp_path / "files").to_list() == ROWS
    Dataset.from_list(ROWS).save_to_disk(tmp_path / "saved")
    assert load_dataset_from(tmp_path / "saved")["text"] == ["CAT", "DOG"]
    DatasetDict({"test": Dataset.from_list(ROWS)}).save_to_disk(tmp_path / "splits")
    assert len(load_dataset_from(tmp_path / "splits", split="test")) == 2
    with pytest.raises(ValueError, match=r"no split 'train'; its splits: \['test'\]"):
        load_dataset_from(tmp_path / "splits")


def test_loading_errors_name_the_file_or_where_they_looked(tmp_path):
    (tmp_path / "broken.jsonl").write_text('{"prompt": "a"}\n{"prompt": \n')
    with pytest.raises(ValueError, match=r"Could not read '.*broken\.jsonl' as a \.jsonl file"):
        load_dataset_from(str(tmp_path / "broken.jsonl"))
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(ValueError, match=r"unsupported file type '\.txt'"):
        load_dataset_from(str(tmp_path / "data.txt"))
    with pytest.raises(FileNotFoundError, match=r"No dataset file or folder at 'missing\.jsonl' \(resolved to /"):
        load_dataset_from("missing.jsonl")
    with pytest.raises(FileNotFoundError, match=r"'nobody/no-such-prompts' is not a local file or folder"):
        load_dataset_from("nobody/no-such-prompts")  # HF_HUB_OFFLINE=1: the Hub cannot have it


def _cvtg(tmp_path, items):
    folder = tmp_path / "CVTG"
    folder.mkdir(exist_ok=True)
    (folder / "2_combined.json").write_text(json.dumps({"data_list": items}))
    return tmp_path


def test_cvtg2k_names_a_file_that_is_not_json(tmp_path):
    (tmp_path / "CVTG").mkdir()
    (tmp_path / "CVTG" / "2_combined.json").write_text('{"data_list": [')
    with pytest.raises(ValueError, match=r"CVTG/2_combined\.json is not valid JSON"):
        load_cvtg2k(tmp_path, subset="CVTG", region_counts=[2])


def test_cvtg2k_reads_a_lone_sentence_as_one_text_and_skips_annotations_of_another_type(tmp_path, caplog):
    prompt = "A sign that says 'OPEN' and a door with 'EXIT'."
    items = [
        {"index": 0, "prompt": prompt, "carrier_list": ["sign", "door"], "sentence_list": "OPEN EXIT"},
        {"index": 1, "prompt": prompt, "carrier_list": ["sign"], "sentence_list": 42},
        {"index": 2, "prompt": prompt, "carrier_list": {"a": 1}, "sentence_list": ["OPEN"]},
        {"index": 3, "prompt": prompt, "carrier_list": ["sign", "door"], "sentence_list": ["OPEN", "EXIT"]},
    ]
    with caplog.at_level(logging.WARNING, logger="trl_var.data.cvtg"):
        dataset = load_cvtg2k(_cvtg(tmp_path, items), subset="CVTG", region_counts=[2], split_files="combined")
    assert dataset["index"] == [0, 3]
    assert dataset["sentence_list"] == [["OPEN EXIT"], ["OPEN", "EXIT"]]  # not ['O', 'P', 'E', ...]
    assert "Skipped 2 of 4 rows of CVTG/2_combined.json: 2 annotations not lists of texts ([1, 2])" in caplog.text
