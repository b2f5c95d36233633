"""A Hub dataset's files for a config and split: the dataset card's `configs:` read by the
`datasets` library's rules, checked against that library, then the same listing on a local mirror
(the hf:// code path on disk: the card read, the globs, the reader)."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pytest
from datasets import load_dataset_builder
from datasets.data_files import FILES_TO_IGNORE, sanitize_patterns
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard

from tests.pipeline_helpers import write_docs
from yxanul_ray.config import job_from_dict
from yxanul_ray.hub import SourceUnavailable, resolve_files
from yxanul_ray.hub_layout import (
    REPO_FILES,
    LayoutError,
    SplitPatterns,
    card_front_matter,
    check_one_config,
    conversion_configs,
    split_patterns,
)
from yxanul_ray.local_data import local_stage
from yxanul_ray.tokenizer import load_tokenizer

TOK = load_tokenizer("gpt2")

FINEWEB_EDU_CARD = {"configs": [  # the layout of HuggingFaceFW/fineweb-edu's card, abridged
    {"config_name": "default", "data_files": [{"split": "train", "path": "data/*/*"}]},
    {"config_name": "sample-10BT", "data_files": [{"split": "train", "path": "sample/10BT/*"}]},
    {"config_name": "CC-MAIN-2024-10", "data_files": [{"split": "train", "path": "data/CC-MAIN-2024-10/*"}]},
]}


def no_conventions(base: str):
    raise AssertionError(f"the card's data_files decide; no folder is looked at ({base!r})")


def patterns_of(card: dict, config=None, split="train", conventions=no_conventions) -> tuple[str, ...]:
    return split_patterns(card, config, split, "src", conventions).patterns


def test_the_default_config_is_the_one_datasets_picks():
    assert patterns_of(FINEWEB_EDU_CARD) == ("data/*/*",)
    assert patterns_of(FINEWEB_EDU_CARD, "sample-10BT") == ("sample/10BT/*",)
    # The only config, whatever its name; or the one marked `default: true`.
    single = {"configs": [{"config_name": "en", "data_files": "en/*.parquet"}]}
    marked = {"configs": [{"config_name": "a", "data_files": "a/*"},
                          {"config_name": "b", "data_files": "b/*", "default": True}]}
    assert patterns_of(single) == ("en/*.parquet",)
    assert patterns_of(marked) == ("b/*",)
    for card in (FINEWEB_EDU_CARD, single, marked):
        assert MetadataConfigs.from_dataset_card_data(card).get_default_config_name() in {
            c.get("config_name") for c in card["configs"]}


def test_data_files_forms_as_datasets_sanitizes_them():
    forms = ["data/*.parquet", ["part0/*", "part1/*"],
             [{"split": "train", "path": ["train/a/*", "train/b/*"]}, {"split": "test", "path": "test/*"}]]
    for data_files in forms:
        card = {"configs": [{"config_name": "default", "data_files": data_files}]}
        for split, patterns in sanitize_patterns(data_files).items():
            assert patterns_of(card, split=split) == tuple(patterns)
    # Globs are relative to the config's data_dir.
    card = {"configs": [{"config_name": "default", "data_dir": "v2", "data_files": ["*.parquet", "./more/*"]}]}
    assert patterns_of(card) == ("v2/*.parquet", "v2/more/*")


def test_what_the_card_lacks_is_named_with_the_setting_to_change():
    with pytest.raises(LayoutError, match=r"config 'sample-10B' is not in the dataset card \(its configs: default, "
                                          r"sample-10BT, CC-MAIN-2024-10\); fix: sources.src.hf_config"):
        patterns_of(FINEWEB_EDU_CARD, "sample-10B")
    with pytest.raises(LayoutError, match=r"config 'default' has no split 'validation' \(its splits: train\); "
                                          r"fix: sources.src.split"):
        patterns_of(FINEWEB_EDU_CARD, split="validation")
    with pytest.raises(LayoutError, match=r"names no default config \(its configs: a, b\); fix: sources.src.hf_config"):
        patterns_of({"configs": [{"config_name": "a", "data_files": "a/*"},
                                 {"config_name": "b", "data_files": "b/*"}]})
    with pytest.raises(LayoutError, match=r"marks several configs default \(a, b\)"):
        patterns_of({"configs": [{"config_name": "a", "data_files": "a/*", "default": True},
                                 {"config_name": "b", "data_files": "b/*", "default": True}]})
    # What `datasets` refuses in a card is refused, with its reason.
    with pytest.raises(LayoutError, match=r"`configs:` is not as `datasets` reads it: .*config_name"):
        patterns_of({"configs": [{"data_files": "*/*/*"}]})
    with pytest.raises(LayoutError, match=r"`configs:` is not as `datasets` reads it: Expected data_files"):
        patterns_of({"configs": [{"config_name": "default", "data_files": {"train": "a/*"}}]})


def test_the_card_s_front_matter_is_parsed_as_huggingface_hub_parses_it():
    card = card_front_matter("---\nlicense: mit\npretty_name: 'a --- b'\nconfigs:\n- config_name: default\n"
                             "  data_files: 'x---y/*'\n---\n# Title\n---\nnot front matter\n", "README.md")
    assert card["pretty_name"] == "a --- b" and card["configs"][0]["data_files"] == "x---y/*"
    assert card == DatasetCard("---\nlicense: mit\npretty_name: 'a --- b'\nconfigs:\n- config_name: default\n"
                               "  data_files: 'x---y/*'\n---\n").data.to_dict()
    assert card_front_matter("# a card without front matter\n", "README.md") == {}
    with pytest.raises(LayoutError, match=r"front matter \(README.md\) is not a YAML mapping"):
        card_front_matter("---\n- a\n- list\n---\n", "README.md")
    assert REPO_FILES == set(FILES_TO_IGNORE)


LAYOUTS = {  # a folder of files -> what a source of each split lists there
    "sharded and a split folder (datasets finds no train split)": (
        ["data/test-00000-of-00001.parquet", "train/a.parquet"], {"test": ["data/test-00000-of-00001.parquet"]}),
    "split folders": (["data/train/0.parquet", "data/train/1.parquet", "data/validation/0.parquet"],
                      {"train": ["data/train/0.parquet", "data/train/1.parquet"],
                       "validation": ["data/validation/0.parquet"]}),
    "split in file names": (["train-0.parquet", "train_1.parquet", "dev.parquet", "notes/x.parquet"],
                            {"train": ["train-0.parquet", "train_1.parquet"], "validation": ["dev.parquet"]}),
    "every file is train": (["a.parquet", "deep/b.parquet", ".hidden/c.parquet"],
                            {"train": ["a.parquet", "deep/b.parquet"]}),
    "sharded": (["data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet",
                 "data/random-00000-of-00001.parquet", "train/ignored.parquet"],
                {"train": ["data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet"],
                 "random": ["data/random-00000-of-00001.parquet"]}),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_split_s_files_are_those_datasets_builds_it_from(tmp_path, layout):
    """The files a source lists for each split, over the mirror's hf:// code path, are the ones
    `datasets`' own builder for the folder reads, on layouts that tell conventions apart."""
    files, expected = LAYOUTS[layout]
    repo = tmp_path / "datasets" / "org" / "corpus"
    for rel in files:
        write_docs(str(repo / rel), [f"text of {rel}"])
    builder = load_dataset_builder(str(repo))
    built = {str(split): sorted(os.path.relpath(f, repo) for f in files)
             for split, files in builder.config.data_files.items()}
    assert built == expected
    for split, names in expected.items():
        assert listed(mirror_source(tmp_path, split=split)) == names
    with pytest.raises(SourceUnavailable, match=rf"has no split 'nope' \(its splits: {', '.join(expected)}\); "
                                                r"fix: sources.a.split"):
        listed(mirror_source(tmp_path, split="nope"))


def test_a_card_config_with_data_dir_only_finds_its_splits_as_datasets_does(tmp_path):
    repo = tmp_path / "datasets" / "org" / "corpus"
    for rel in ("v2/data/test-00000-of-00001.parquet", "v2/train/a.parquet", "v1/train/old.parquet"):
        write_docs(str(repo / rel), [f"text of {rel}"])
    (repo / "README.md").write_text("---\nconfigs:\n- config_name: v2\n  data_dir: v2\n- config_name: v1\n"
                                    "  data_dir: v1\n  default: true\n---\n")
    assert listed(mirror_source(tmp_path)) == ["v1/train/old.parquet"]
    assert listed(mirror_source(tmp_path, config="v2", split="test")) == ["v2/data/test-00000-of-00001.parquet"]
    builder = load_dataset_builder(str(repo), "v2")
    assert set(builder.config.data_files) == {"test"}
    with pytest.raises(SourceUnavailable, match=r"the card's config 'v2' \(data_dir 'v2'\) has no split 'train' "
                                                r"\(its splits: test\)"):
        listed(mirror_source(tmp_path, config="v2"))


def test_the_parquet_copy_s_configs_are_told_from_its_file_names():
    copy = ["main/train/0000.parquet", "main/partial-train/0001.parquet", "socratic/train/0000.parquet"]
    assert conversion_configs(copy) == ["main", "socratic"]
    assert conversion_configs(["data/train/part-0.parquet", "main/train/0000.parquet"]) == []  # not all alike
    assert conversion_configs(["data/x/train/0000.parquet"]) == conversion_configs([]) == []
    conventions = SplitPatterns(("**/train/**",), "the layout conventions", by_conventions=True)
    with pytest.raises(LayoutError, match=r"2 config folders \(main, socratic\).*fix: sources.src.hf_config"):
        check_one_config(copy, conventions, None, "train", "src")
    check_one_config(copy, conventions, "main", "train", "src")  # the source names its config
    card_config = SplitPatterns(("*/*/*",), "the card's config 'default'")
    check_one_config(copy, card_config, None, "train", "src")  # the card's own config, whatever it globs


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
