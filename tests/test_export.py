"""`yxanul-ray export` writes the tokenizer the run trained on, or says why it cannot."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest

from tests.helpers import base_config, train_tokenizer_json
from yxanul_ray.checkpoint import TrainState, save_checkpoint
from yxanul_ray.cli import main as cli_main
from yxanul_ray.config import job_from_dict
from yxanul_ray.model import build_model
from yxanul_ray.tokenizer import tokenizer_identity


def checkpoint_trained_with(tmp_path, placeholder_sources, tokenizer: str, identity: str | None) -> str:
    """A checkpoint of a run that named `tokenizer` and, where `identity` is not None, recorded it
    as its coordinator does (an earlier version's records none)."""
    raw = base_config(placeholder_sources)
    raw["data"]["tokenizer"] = tokenizer
    job = job_from_dict(raw, "<test>")
    model = build_model(job.model.shape, "torch")
    coordinator = {"tokenizer": identity} if identity is not None else {}
    path = str(tmp_path / "run" / "checkpoint_2026-12-05_12-00-00.000001")
    save_checkpoint(path, model.portable_state_dict(), {}, TrainState(stage=1, coordinator=coordinator), job.to_dict())
    return path


def exported_vocab(out_dir) -> int:
    with open(os.path.join(out_dir, "tokenizer.json")) as f:
        return len(json.load(f)["model"]["vocab"])


def test_export_writes_the_tokenizer_the_run_trained_on_and_refuses_another(tmp_path, placeholder_sources, capsys):
    (tmp_path / "tok").mkdir()
    trained = train_tokenizer_json(str(tmp_path / "tok" / "tokenizer.json"), vocab=320)
    checkpoint = checkpoint_trained_with(tmp_path, placeholder_sources, trained, tokenizer_identity(trained))
    assert cli_main(["export", checkpoint, str(tmp_path / "hf1")]) == 0
    assert exported_vocab(tmp_path / "hf1") == 320
    # An OUT_DIR that cannot be a directory (a file is there): one line, not a FileExistsError.
    (tmp_path / "a-file").write_text("")
    assert cli_main(["export", checkpoint, str(tmp_path / "a-file")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: yxanul-ray export OUT_DIR {tmp_path / 'a-file'}: cannot be made a directory (File exists); fix: a "
        "directory this user can create, or an existing one (its files of the same name are replaced)")

    # Moved (as a `ray job submit` working dir is, once the job ends): an error with the fix, no traceback.
    shutil.move(str(tmp_path / "tok"), str(tmp_path / "moved"))
    assert cli_main(["export", checkpoint, str(tmp_path / "hf2")]) == 2
    err = capsys.readouterr().err
    assert f"the run's tokenizer {trained!r}: no such file" in err
    assert "fix: --tokenizer PATH, a tokenizer.json (or its directory) with the content the run trained on " \
           f"({tokenizer_identity(str(tmp_path / 'moved'))[:23]}...)" in err
    assert not (tmp_path / "hf2").exists()
    # Named where it is now, by its file or its directory: exported.
    for where in (tmp_path / "moved", tmp_path / "moved" / "tokenizer.json"):
        assert cli_main(["export", checkpoint, str(tmp_path / "hf3"), "--tokenizer", str(where)]) == 0
        assert exported_vocab(tmp_path / "hf3") == 320

    # Edited since (another tokenizer at the run's path, or given): refused. Before, export wrote
    # the edited one beside weights trained on other ids, without a word.
    shutil.move(str(tmp_path / "moved"), str(tmp_path / "tok"))
    other = train_tokenizer_json(str(tmp_path / "other.json"), vocab=300)
    shutil.copy(other, trained)
    for given in ([], ["--tokenizer", other], ["--tokenizer", "gpt2"]):
        assert cli_main(["export", checkpoint, str(tmp_path / "hf4"), *given]) == 2
        assert "is not the tokenizer the run trained on" in capsys.readouterr().err
    assert not (tmp_path / "hf4").exists()


def test_an_earlier_versions_checkpoint_exports_with_the_tokenizer_it_names(tmp_path, placeholder_sources, capsys):
    """A checkpoint that records no tokenizer content cannot be checked: the named one is
    exported, and a missing one is still an error with the fix."""
    trained = train_tokenizer_json(str(tmp_path / "tokenizer.json"), vocab=320)
    checkpoint = checkpoint_trained_with(tmp_path, placeholder_sources, trained, None)
    assert cli_main(["export", checkpoint, str(tmp_path / "hf")]) == 0
    assert exported_vocab(tmp_path / "hf") == 320
    os.remove(trained)
    assert cli_main(["export", checkpoint, str(tmp_path / "hf2")]) == 2
    assert "no such file; fix: --tokenizer PATH" in capsys.readouterr().err


@pytest.mark.parametrize("given", [None, "gpt2"])
def test_a_gpt2_run_exports_gpt2(tmp_path, placeholder_sources, given):
    checkpoint = checkpoint_trained_with(tmp_path, placeholder_sources, "gpt2", "gpt2")
    assert cli_main(["export", checkpoint, str(tmp_path / "hf"), *(["--tokenizer", given] if given else [])]) == 0
    assert os.path.exists(tmp_path / "hf" / "vocab.json") and os.path.exists(tmp_path / "hf" / "merges.txt")


@pytest.mark.parametrize("tokenizer", ["gpt2", "own"])
def test_the_export_is_what_a_hub_user_expects(tmp_path, placeholder_sources, tokenizer):
    """transformers loads the model and the tokenizer with its end-of-text token set; beside
    them, generation_config.json and a model card naming the sources, the curriculum, the tokens
    trained and the final held-out losses."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    spec = "gpt2" if tokenizer == "gpt2" else train_tokenizer_json(str(tmp_path / "tok"))
    identity = "gpt2" if tokenizer == "gpt2" else tokenizer_identity(spec)
    checkpoint = checkpoint_trained_with(tmp_path, placeholder_sources, spec, identity)
    out = tmp_path / "hf"
    assert cli_main(["export", checkpoint, str(out)]) == 0
    model = AutoModelForCausalLM.from_pretrained(str(out))
    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok.eos_token in ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eos|>")
    assert tok.eos_token_id == model.config.eos_token_id == GenerationConfig.from_pretrained(str(out)).eos_token_id
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers") and "## Curriculum" in card
    assert all(f"**{name}**" in card for name in ("fineweb", "math", "code"))


def test_the_model_card_names_each_hub_sources_pinned_commit_and_the_final_losses():
    from yxanul_ray.export import model_card

    sha = "0123456789abcdef0123456789abcdef01234567"
    job = {"run": {"name": "demo"}, "data": {"tokenizer": "gpt2"},
           "sources": {"web": {"hf": "org/web", "hf_config": "sample-10BT", "split": "train", "revision": sha},
                       "code": {"hf": None, "path": "/data/code/*.parquet", "format": "parquet"}},
           "curriculum": {"target_tokens": 300, "validation_seq_len": 128,
                          "stages": [{"name": "short", "seq_len": 8, "tokens": 100, "mix": {"web": 1.0, "code": 0.0}},
                                     {"name": "long", "seq_len": 64, "tokens": 200, "mix": {"web": 0.5, "code": 0.5}}]}}
    state = {"tokens": 300, "step": 12, "validation": [{"tokens": 300, "loss": {"web": 3.21, "code": 2.5}}]}
    card = model_card(job, state, "runs/demo/checkpoint_x")
    assert f"hf://datasets/org/web (sample-10BT), split train, commit {sha}" in card
    assert "- **code**: /data/code/*.parquet (parquet)" in card
    assert "| long | 64 | 200 | web 50%, code 50% |" in card and "| short | 8 | 100 | web 100% |" in card
    assert "- web: 3.2100" in card and "300 of 300 target tokens" in card


def test_push_to_hub_uploads_the_export_through_huggingface_hub(tmp_path, placeholder_sources, monkeypatch, capsys):
    """`--push-to-hub REPO` sends the exported folder through `HfApi.upload_folder` to the Hub
    the run names (the local stand-in here); what lands there loads in transformers. A repo id the
    Hub would refuse, or no token, is refused before any export work."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.fake_hub import FakeHub
    checkpoint = checkpoint_trained_with(tmp_path, placeholder_sources, "gpt2", "gpt2")
    with FakeHub({}) as hub:
        hub.pushed_to = str(tmp_path / "pushed")
        with open(os.path.join(checkpoint, "job.json")) as f:
            job = json.load(f)
        job["data"]["hf_endpoint"] = hub.endpoint
        with open(os.path.join(checkpoint, "job.json"), "w") as f:
            json.dump(job, f)
        monkeypatch.setenv("HF_TOKEN", "hf_pushing")
        out = tmp_path / "hf"
        assert cli_main(["export", checkpoint, str(out), "--push-to-hub", "me/tiny-curriculum"]) == 0
        assert f"pushed {out} -> {hub.endpoint}/me/tiny-curriculum/commit/" in capsys.readouterr().out
        assert any(a.startswith("POST /api/models/me/tiny-curriculum/commit/main") for a in hub.asked)
        pushed = tmp_path / "pushed" / "me" / "tiny-curriculum"
        assert sorted(os.listdir(pushed)) == sorted(os.listdir(out))
        assert AutoModelForCausalLM.from_pretrained(str(pushed)).config.eos_token_id == \
            AutoTokenizer.from_pretrained(str(pushed)).eos_token_id
        asked = len(hub.asked)
        assert cli_main(["export", checkpoint, str(tmp_path / "hf2"), "--push-to-hub", "not a repo"]) == 2
        assert re.search(r"^error: --push-to-hub 'not a repo': .*fix: a repo id as <user or org>/<name>$",
                         capsys.readouterr().err, re.MULTILINE)
        monkeypatch.delenv("HF_TOKEN")
        monkeypatch.setenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
        monkeypatch.setattr("huggingface_hub.constants.HF_HUB_DISABLE_IMPLICIT_TOKEN", True)
        assert cli_main(["export", checkpoint, str(tmp_path / "hf2"), "--push-to-hub", "me/tiny-curriculum"]) == 2
        assert "no Hugging Face token to push with; fix: HF_TOKEN" in capsys.readouterr().err
        assert not os.path.exists(tmp_path / "hf2") and len(hub.asked) == asked
