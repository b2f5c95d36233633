"""A Hub dataset's files for a config and split: the dataset card's `configs:` read by the
`datasets` library's rules, checked against that library, then the same listing on a local mirror
(the hf:// code path on disk: the card read, the globs, the reader)."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pytest
from datasets.data_files import sanitize_patterns
from datasets.utils.metadata import MetadataConfigs

from tests.pipeline_helpers import write_docs
from yxanul_ray.config import job_from_dict
from yxanul_ray.hub import SourceUnavailable, resolve_files
from yxanul_ray.hub_layout import LayoutError, check_one_config, conversion_configs, layout_groups, split_patterns
from yxanul_ray.local_data import local_stage
from yxanul_ray.tokenizer import load_tokenizer

TOK = load_tokenizer("gpt2")

FINEWEB_EDU_CARD = {"configs": [  # the layout of HuggingFaceFW/fineweb-edu's card, abridged
    {"config_name": "default", "data_files": [{"split": "train", "path": "data/*/*"}]},
    {"config_name": "sample-10BT", "data_files": [{"split": "train", "path": "sample/10BT/*"}]},
    {"config_name": "CC-MAIN-2024-10", "data_files": [{"split": "train", "path": "data/CC-MAIN-2024-10/*"}]},
]}


def only_group(card: dict, config=None, split="train") -> tuple[str, ...]:
    layout = split_patterns(card, config, split, "src")
    assert len(layout.groups) == 1
    return layout.groups[0]


def test_the_default_config_is_the_one_datasets_picks():
    assert only_group(FINEWEB_EDU_CARD) == ("data/*/*",)
    assert only_group(FINEWEB_EDU_CARD, "sample-10BT") == ("sample/10BT/*",)
    # The only config, whatever its name; or the one marked `default: true`.
    single = {"configs": [{"config_name": "en", "data_files": "en/*.parquet"}]}
    marked = {"configs": [{"config_name": "a", "data_files": "a/*"},
                          {"config_name": "b", "data_files": "b/*", "default": True}]}
    assert only_group(single) == ("en/*.parquet",)
    assert only_group(marked) == ("b/*",)
    for card in (FINEWEB_EDU_CARD, single, marked):
        assert MetadataConfigs.from_dataset_card_data(card).get_default_config_name() in {
            c.get("config_name") for c in card["configs"]}


def test_data_files_forms_as_datasets_sanitizes_them():
    forms = ["data/*.parquet", ["part0/*", "part1/*"],
             [{"split": "train", "path": ["train/a/*", "train/b/*"]}, {"split": "test", "path": "test/*"}]]
    for data_files in forms:
        card = {"configs": [{"config_name": "default", "data_files": data_files}]}
        for split, patterns in sanitize_patterns(data_files).items():
            assert only_group(card, split=split) == tuple(patterns)
    # Globs are relative to the config's data_dir.
    card = {"configs": [{"config_name": "default", "data_dir": "v2", "data_files": ["*.parquet", "./more/*"]}]}
    assert only_group(card) == ("v2/*.parquet", "v2/more/*")


def test_what_the_card_lacks_is_named_with_the_setting_to_change():
    with pytest.raises(LayoutError, match=r"config 'sample-10B' is not in the dataset card \(its configs: default, "
                                          r"sample-10BT, CC-MAIN-2024-10\); fix: sources.src.hf_config"):
        split_patterns(FINEWEB_EDU_CARD, "sample-10B", "train", "src")
    with pytest.raises(LayoutError, match=r"config 'default' has no split 'validation' \(its splits: train\); "
                                          r"fix: sources.src.split"):
        split_patterns(FINEWEB_EDU_CARD, None, "validation", "src")
    with pytest.raises(LayoutError, match=r"names no default config \(its configs: a, b\); fix: sources.src.hf_config"):
        split_patterns({"configs": [{"config_name": "a", "data_files": "a/*"},
                                    {"config_name": "b", "data_files": "b/*"}]}, None, "train", "src")
    with pytest.raises(LayoutError, match=r"marks several configs default \(a, b\)"):
        split_patterns({"configs": [{"config_name": "a", "data_files": "a/*", "default": True},
                                    {"config_name": "b", "data_files": "b/*", "default": True}]}, None, "train", "src")


def test_a_card_without_configs_falls_back_on_the_layout_conventions():
    layout = split_patterns({"license": "mit"}, "cfg", "validation", "src")
    assert layout.groups == layout_groups("cfg", "validation")
    assert layout.groups[0] == ("cfg/data/validation-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9]*.*",)
    assert "cfg/**/dev/**" in layout.groups[1] and "cfg/**/valid[-._ 0-9]*" in layout.groups[2]
    assert len(layout.groups) == 3  # every file is the train split's alone
    assert layout_groups("", "train")[-1] == ("**",)


def test_the_parquet_copy_s_configs_are_told_from_its_file_names():
    copy = ["main/train/0000.parquet", "main/partial-train/0001.parquet", "socratic/train/0000.parquet"]
    assert conversion_configs(copy) == ["main", "socratic"]
    assert conversion_configs(["data/train/part-0.parquet", "main/train/0000.parquet"]) == []  # not all alike
    assert conversion_configs(["data/x/train/0000.parquet"]) == conversion_configs([]) == []
    conventions = split_patterns({}, None, "train", "src")
    with pytest.raises(LayoutError, match=r"2 config folders \(main, socratic\).*fix: sources.src.hf_config"):
        check_one_config(copy, conventions, None, "train", "src")
    check_one_config(copy, conventions, "main", "train", "src")  # the source names its config
    check_one_config(copy, split_patterns({"configs": [{"data_files": "*/*/*"}]}, None, "train", "src"),
                     None, "train", "src")  # the card's own config, whatever it globs


def mirror_source(root, *, config=None, split="train", fmt="parquet") -> dict:
    return {"hf": "org/corpus", "hf_mirror": str(root), "hf_config": config, "split": split, "format": fmt,
            "validation_docs": 0}


def one_hub_source_job(source: dict):
    return job_from_dict({
        "sources": {"a": source},
        "curriculum": {"target_tokens": 64, "stages": [
            {"name": "s", "seq_len": 8, "tokens": 64, "batch_size": 8, "mix": {"a": 1.0}}]},
        "model": {"preset": "tiny"},
    }, "<test>")


def listed(source: dict) -> list[str]:
    files = resolve_files(one_hub_source_job(source).sources["a"])
    assert files.kind == "hf"
    return [p.split("datasets/org/corpus/", 1)[1] for p in files.paths]


def test_a_split_is_its_own_files_on_a_mirror(tmp_path):
    repo = tmp_path / "datasets" / "org" / "corpus"
    for rel in ("cfg/train/0000.parquet", "cfg/train/0001.parquet", "cfg/test/0000.parquet",
                "data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet",
                "data/validation-00000-of-00001.parquet", "other/0000.parquet"):
        write_docs(str(repo / rel), [f"text of {rel}"])
    # No card: the auto-converted layout (config/split/NNNN.parquet). Before, every parquet file
    # under the config was listed, the test split's among them.
    assert listed(mirror_source(tmp_path, config="cfg")) == ["cfg/train/0000.parquet", "cfg/train/0001.parquet"]
    assert listed(mirror_source(tmp_path, config="cfg", split="test")) == ["cfg/test/0000.parquet"]
    # The sharded layout is the first convention, so the `**/train/**` folders do not join it.
    assert listed(mirror_source(tmp_path)) == ["data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet"]
    assert listed(mirror_source(tmp_path, split="validation")) == ["data/validation-00000-of-00001.parquet"]
    # A card whose config lists globs without splits (the train split). Before: "has no split 'train'".
    (repo / "README.md").write_text("---\nconfigs:\n- config_name: main\n  data_files:\n  - other/*\n  - cfg/test/*\n"
                                    "---\n# card\n")
    assert listed(mirror_source(tmp_path)) == ["cfg/test/0000.parquet", "other/0000.parquet"]
    with pytest.raises(SourceUnavailable, match=r"source a \(hf://datasets/org/corpus\): config 'cfg' is not in the "
                                                r"dataset card \(its configs: main\); fix: sources.a.hf_config"):
        listed(mirror_source(tmp_path, config="cfg"))


def test_jsonl_on_the_hub_path_and_what_is_found_instead(tmp_path):
    repo = tmp_path / "datasets" / "org" / "corpus"
    texts = [f"hub jsonl document {i} " * 3 for i in range(12)]
    (repo / "data").mkdir(parents=True)
    (repo / "data" / "train-0.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[:5]))
    with pa.OSFile(str(repo / "data" / "train-1.jsonl.zst"), "wb") as raw, pa.CompressedOutputStream(raw, "zstd") as z:
        z.write("".join(json.dumps({"text": t}) + "\n" for t in texts[5:]).encode())
    (repo / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files: data/*\n---\n")
    source = mirror_source(tmp_path, fmt="jsonl")
    job = one_hub_source_job(source)
    files = resolve_files(job.sources["a"])
    assert files.format == "jsonl" and listed(source) == ["data/train-0.jsonl", "data/train-1.jsonl.zst"]
    batches, _ = local_stage(job, 0, {}, {"a": files}, TOK.eos_id)
    rows = np.concatenate([b["tokens"] for b in batches])
    stream = np.concatenate([np.append(np.array(ids, dtype=np.int32), TOK.eos_id) for ids in TOK.encode_batch(texts)])
    assert rows.shape == (8, 9) and (rows[:, 1:].ravel() == stream[1:65]).all()
    # The same dataset read as parquet (the default format) finds no parquet file, and says what it found.
    (repo / "data" / "more.json.gz").write_bytes(b"")
    with pytest.raises(SourceUnavailable) as err:
        listed(mirror_source(tmp_path))
    message = str(err.value)
    assert "no parquet files for config 'default', split 'train' in the card's config 'default'" in message
    assert "found only .json.gz, .jsonl, .jsonl.zst files; fix: sources.a.format: jsonl" in message
    assert "README" not in message.split("found only")[1]
    for name in ("train-0.jsonl", "train-1.jsonl.zst"):
        os.remove(repo / "data" / name)
    with pytest.raises(SourceUnavailable, match=r"found only \.json\.gz files; this reader takes parquet, or jsonl "
                                                r"with sources\.a\.format: jsonl; .* refs/convert/parquet"):
        listed(mirror_source(tmp_path))
