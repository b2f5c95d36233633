"""--resume under a config that differs from the checkpoint's run: refused before any cluster work
where the run would go on wrong, followed and named where it may change."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from tests.helpers import CONFIGS, REPO, demo_subset, train_tokenizer_json
from yxanul_ray.checkpoint import TrainState, checkpoint_path, save_checkpoint
from yxanul_ray.cli import main as cli_main
from yxanul_ray.config import job_from_dict, load_job
from yxanul_ray.hub import resolve_files
from yxanul_ray.manifest import manifest_difference, manifest_now
from yxanul_ray.preflight import absolute_paths, check_resume, prepare_demo_corpus
from yxanul_ray.resume_check import review_resume
from yxanul_ray.specs import ConfigError
from yxanul_ray.tokenizer import tokenizer_identity

DEMO = os.path.join(CONFIGS, "demo.yaml")


@pytest.fixture(scope="module", autouse=True)
def demo_corpus_in_repo():
    """configs/demo.yaml's corpus (data/demo, relative to the repo, where pytest runs), built if
    this module runs before anything else has built it."""
    prepare_demo_corpus(DEMO, [])


def demo_files(job=None) -> dict[str, dict]:
    """The file lists a checkpoint of the demo records (the coordinator's `files`)."""
    job = job or load_job(DEMO)
    return {name: manifest_now(spec, resolve_files(spec)) for name, spec in job.sources.items()}


def state_at(stage: int, step_in_stage: int = 0, **fields) -> TrainState:
    """A demo checkpoint's state at `stage`, its sources' files recorded as this version does."""
    coordinator = {"files": demo_files(), **fields.pop("coordinator", {})}
    return TrainState(stage=stage, step_in_stage=step_in_stage, coordinator=coordinator, **fields)


def saved_demo_job(*overrides: str):
    """The demo job as a checkpoint's job.json holds it (absolute paths, through JSON)."""
    job = absolute_paths(load_job(DEMO, list(overrides)))
    return job_from_dict(json.loads(json.dumps(job.to_dict(), default=list)), "ckpt/job.json")


def fields_of(lines: list[str]) -> list[str]:
    return [line.split(":")[0] for line in lines]


def test_the_same_settings_resume_without_a_word():
    review = review_resume(saved_demo_job(), load_job(DEMO, ["run.storage_path=/elsewhere", "run.log_every_steps=3"]),
                           state_at(3, 2))
    assert review.conflicts == [] and review.notes == []


def test_what_decides_the_weights_the_data_or_the_finished_stages_cannot_change():
    now = load_job(DEMO, ["model.overrides.d_model=96", "data.max_doc_chars=1000",
                          "sources.math.text_field=body", "curriculum.stages.0.tokens=4096",
                          "curriculum.stages.3.mix.math=0.15", "curriculum.stages.3.mix.fineweb=0.80",
                          "curriculum.target_tokens=400096"])
    review = review_resume(saved_demo_job(), now, state_at(3))
    assert fields_of(review.conflicts) == ["model (d_model)", "data.max_doc_chars", "sources.math.text_field",
                                           "curriculum.stages.0.tokens"]
    assert "model (d_model): checkpoint 64, now 96 (the checkpoint's weights have the old shape)" in review.conflicts
    # Stage 4 (index 3) has not begun at a boundary checkpoint: its new mix is followed, and said.
    assert "curriculum.stages: stage(s) 4 differ from the checkpoint's run; they run as the config says" \
        in review.notes
    # Begun (2 steps in), the same change is a conflict.
    begun = review_resume(saved_demo_job(), now, state_at(3, 2))
    assert "curriculum.stages.3.mix" in fields_of(begun.conflicts)


def test_later_stages_the_optimizer_and_the_workers_at_a_boundary_may_change():
    now = load_job(DEMO, ["curriculum.stages.9.tokens=200000", "curriculum.target_tokens=500000",
                          "optimizer.peak_lr=1e-3", "run.workers=1"])
    review = review_resume(saved_demo_job(), now, state_at(4))
    assert review.conflicts == []
    assert fields_of(review.notes) == ["run.workers", "curriculum.stages", "curriculum.target_tokens",
                                       "optimizer.peak_lr"]
    assert "curriculum.target_tokens: checkpoint 400000, now 500000 (the LR decays over the new target from here " \
           "on)" in review.notes


def test_the_seed_may_change_until_a_source_is_past_its_first_pass():
    def cursors(epoch: int) -> dict:
        at = {"epoch": epoch, "file_pos": 1, "row": 7, "piece": 0, "token_offset": 0}
        return {"stage_cursors": {"0": {}, "1": {"fineweb": at, "math": at, "code": at}}}

    now = load_job(DEMO, ["run.seed=1"])
    first_pass = review_resume(saved_demo_job(), now, state_at(1, coordinator=cursors(0)))
    assert first_pass.conflicts == [] and fields_of(first_pass.notes) == ["run.seed"]
    wrapped = review_resume(saved_demo_job(), now, state_at(1, coordinator=cursors(1)))
    assert fields_of(wrapped.conflicts) == ["run.seed"]


def test_a_mid_stage_checkpoint_resumes_on_another_number_of_workers():
    """The steps' rows do not depend on the workers: a note, not a conflict."""
    review = review_resume(saved_demo_job(), load_job(DEMO, ["run.workers=1"]), state_at(4, 5))
    assert review.conflicts == [] and fields_of(review.notes) == ["run.workers"]
    assert "the same steps, split among 1 from step 6 of stage 5 on" in review.notes[0]


def test_a_checkpoint_in_a_stage_the_config_no_longer_has(tmp_path):
    three = load_job(demo_subset(str(tmp_path / "three.yaml"), 0, 3))
    review = review_resume(saved_demo_job(), three, state_at(5))
    assert "curriculum.stages: the checkpoint's run finished 5 of its 10 stages; the config has 3" in review.conflicts
    begun = review_resume(saved_demo_job(), three, state_at(3, 1))
    assert "curriculum.stages: the checkpoint's run finished 3 of its 10 stages and begun stage 4; the config has 3" \
        in begun.conflicts
    # A finished run's last checkpoint, under its own three stages: nothing left to differ.
    assert review_resume(saved_demo_job(), three, state_at(3)).conflicts == []


def test_jobs_train_refuses_a_conflicting_resume_before_starting_ray(tmp_path):
    ckpt = str(tmp_path / "checkpoint_x")
    save_checkpoint(ckpt, {}, {}, TrainState(step=9, tokens=20_000, stage=2, step_in_stage=1),
                    absolute_paths(load_job(DEMO)).to_dict())
    proc = subprocess.run([sys.executable, "jobs/train.py", "--config", "configs/demo.yaml",
                           "--set", "model.overrides.d_model=96", "--set", "data.max_doc_chars=5000", "--resume", ckpt],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr
    assert f"cannot resume {ckpt} (stage 3, 1 steps in)" in err
    assert "model (d_model): checkpoint 64, now 96" in err and "data.max_doc_chars: checkpoint 200000, now 5000" in err
    assert os.path.join(ckpt, "job.json") in err  # where the run's own settings are
    assert "Ray instance" not in proc.stdout + proc.stderr  # refused before any cluster work


def test_a_checkpoint_from_another_version_resumes_unchecked_with_a_warning(tmp_path, capsys):
    ckpt = str(tmp_path / "checkpoint_old")
    written = absolute_paths(load_job(DEMO)).to_dict()
    written["run"]["retired_setting"] = 1  # a setting this version no longer has
    save_checkpoint(ckpt, {}, {}, TrainState(stage=2), written)
    check_resume(load_job(DEMO, ["model.overrides.d_model=96"]), ckpt)  # not refused: nothing to compare with
    out = capsys.readouterr().out
    assert f"resume: warning: not compared with the config, {ckpt}/job.json does not load in this version" in out
    assert "retired_setting" in out


def test_jobs_train_resumes_under_the_checkpoints_own_settings_without_a_config(tmp_path):
    ckpt = str(tmp_path / "checkpoint_y")
    # The run's own settings differ from configs/demo.yaml in a way a resume cannot follow.
    own = absolute_paths(load_job(DEMO, ["data.max_doc_chars=5000"]))
    save_checkpoint(ckpt, {}, {}, TrainState(step=9, tokens=20_000, stage=2, step_in_stage=1), own.to_dict())
    proc = subprocess.run([sys.executable, "jobs/train.py", "--set", "model.overrides.d_model=96", "--resume", ckpt],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    # Compared with job.json itself: only the --set change conflicts, not max_doc_chars.
    assert f"{ckpt}/job.json: cannot resume {ckpt}" in proc.stderr
    assert "model (d_model): checkpoint 64, now 96" in proc.stderr and "max_doc_chars" not in proc.stderr


def test_a_moved_corpus_resumes_but_other_files_are_refused(tmp_path, capsys):
    """The cursors index each source's file list: the same files elsewhere resume; a file added,
    renamed or rewritten is refused before any cluster work, naming the source and the file."""
    ckpt = str(tmp_path / "checkpoint_z")
    save_checkpoint(ckpt, {}, {}, state_at(2, 1), absolute_paths(load_job(DEMO)).to_dict())
    moved = tmp_path / "moved"
    shutil.copytree(os.path.join(REPO, "data", "demo"), moved)
    elsewhere = [f"sources.{s}.path={moved}/{s}/*.parquet" for s in ("fineweb", "math", "code")]
    check_resume(absolute_paths(load_job(DEMO, elsewhere)), ckpt)
    assert "resume:" not in capsys.readouterr().out  # same files, same settings: nothing to say

    shutil.copy(moved / "fineweb" / "part-00001.parquet", moved / "fineweb" / "part-00001b.parquet")
    with open(moved / "math" / "part-00002.parquet", "ab") as f:
        f.write(b"\0")
    rewritten = moved / "code" / "part-00002.parquet"  # rewritten to the byte count it had
    content = bytearray(rewritten.read_bytes())
    content[-1000] ^= 0xFF
    rewritten.write_bytes(bytes(content))
    with pytest.raises(ConfigError) as err:
        check_resume(absolute_paths(load_job(DEMO, elsewhere)), ckpt)
    msg = str(err.value)
    assert "sources.fineweb (files): 4 files then, 5 now; new: 'part-00001b.parquet'" in msg
    assert "sources.math (files): 'part-00002.parquet' was" in msg and "the cursors index the run's file list" in msg
    assert (f"sources.code (files): 'part-00002.parquet' has the size it had, {len(content):,} bytes, but other "
            "content") in msg


def test_file_lists_without_fingerprints_compare_by_name_and_size():
    """Checkpoints written before the fingerprints were recorded list [name, size]: they still
    resume where names and sizes agree, and a fingerprint counts only where both lists have one."""
    old = {"root": "/corpus", "files": [["a.parquet", 5], ["b.parquet", 7]]}
    new = {"root": "/moved", "files": [["a.parquet", 5, "0123abcd"], ["b.parquet", 7, "4567ef01"]]}
    assert manifest_difference(old, new) is None and manifest_difference(new, new) is None
    other = {"root": "/moved", "files": [["a.parquet", 5, "0123abcd"], ["b.parquet", 7, "ffffffff"]]}
    assert manifest_difference(new, other) == ("'b.parquet' has the size it had, 7 bytes, but other content "
                                               "(/moved then, /moved now)")
    resized = {"root": "/moved", "files": [["a.parquet", 5], ["b.parquet", 8]]}
    assert manifest_difference(old, resized) == "'b.parquet' was 7 bytes, is 8 (/corpus then, /moved now)"


def test_a_checkpoint_without_file_lists_resumes_with_a_note():
    review = review_resume(saved_demo_job(), load_job(DEMO), TrainState(stage=2), demo_files())
    assert review.conflicts == [] and fields_of(review.notes) == ["sources"]
    assert "does not record its sources' files" in review.notes[0]


def test_a_moved_tokenizer_json_resumes_but_another_tokenizer_is_refused(tmp_path):
    """The checkpoint records its tokenizer's identity (a tokenizer.json's content hash): the same
    file elsewhere (as a job's uploaded working dir moves at each submission) resumes, with a
    note; an edited one, or GPT-2 in its place, is refused."""
    (tmp_path / "run1").mkdir()
    first = train_tokenizer_json(str(tmp_path / "run1" / "tokenizer.json"))
    saved = saved_demo_job(f"data.tokenizer={first}")
    state = state_at(3, coordinator={"tokenizer": tokenizer_identity(first)})
    (tmp_path / "run2").mkdir()
    moved = shutil.copy(first, tmp_path / "run2" / "tokenizer.json")
    now = load_job(DEMO, [f"data.tokenizer={moved}"])
    review = review_resume(saved, now, state, tokenizer_now=tokenizer_identity(str(moved)))
    assert review.conflicts == [] and fields_of(review.notes) == ["data.tokenizer"]
    assert "the same tokenizer.json content, moved" in review.notes[0]

    edited = train_tokenizer_json(str(tmp_path / "run2" / "tokenizer.json"), vocab=300)
    for other in (edited, "gpt2"):
        review = review_resume(saved, load_job(DEMO, [f"data.tokenizer={other}"]), state,
                               tokenizer_now=tokenizer_identity(other))
        assert fields_of(review.conflicts) == ["data.tokenizer"] and "another tokenizer" in review.conflicts[0]
    # A checkpoint of an earlier version (no identity recorded): the names must agree, as before.
    old = review_resume(saved, now, state_at(3), tokenizer_now=tokenizer_identity(str(moved)))
    assert fields_of(old.conflicts) == ["data.tokenizer"]


def test_a_hub_tokenizer_resumes_by_its_content_and_an_earlier_versions_checkpoint_by_its_id(tmp_path):
    """A Hub tokenizer is pinned to a commit and identified by its tokenizer.json's content
    (tokenizer.run_tokenizer's hash): another commit with the same file resumes, with a note; one
    with another file is refused. An earlier version's checkpoint recorded the Hub id, read at no
    commit: the same id resumes, with a note that its commit is not known; another is refused."""
    first = train_tokenizer_json(str(tmp_path / "first.json"))
    other = train_tokenizer_json(str(tmp_path / "other.json"), vocab=300)
    then, later = "1" * 40, "2" * 40
    saved = saved_demo_job(f"data.tokenizer=org/tok@{then}")
    state = state_at(3, coordinator={"tokenizer": tokenizer_identity(first)})
    now = load_job(DEMO, [f"data.tokenizer=org/tok@{later}"])
    same = review_resume(saved, now, state, tokenizer_now=tokenizer_identity(first))
    assert same.conflicts == [] and fields_of(same.notes) == ["data.tokenizer"]
    assert "the same tokenizer.json content, moved or at another commit" in same.notes[0]
    changed = review_resume(saved, now, state, tokenizer_now=tokenizer_identity(other))
    assert fields_of(changed.conflicts) == ["data.tokenizer"] and "another tokenizer" in changed.conflicts[0]

    earlier = saved_demo_job("data.tokenizer=org/tok")
    earlier_state = state_at(3, coordinator={"tokenizer": "org/tok"})
    review = review_resume(earlier, now, earlier_state, tokenizer_now=tokenizer_identity(first))
    assert review.conflicts == [] and fields_of(review.notes) == ["data.tokenizer"]
    assert f"'org/tok' at no commit (an earlier version wrote it); the run goes on with 'org/tok@{later}'" \
        in review.notes[0]
    for renamed in (f"org/other-tok@{later}", "gpt2"):
        review = review_resume(earlier, load_job(DEMO, [f"data.tokenizer={renamed}"]), earlier_state,
                               tokenizer_now=tokenizer_identity(first))
        assert fields_of(review.conflicts) == ["data.tokenizer"]


def test_a_checkpoint_with_a_file_cut_short_or_missing_is_refused_naming_it_and_the_latest_whole_one(tmp_path,
                                                                                                      capsys):
    """A checkpoint copied in part (a file cut short or left out, another file under a name)
    was found only by the train workers, once per run.max_failures: exit 1 after ~30 s and ~200
    lines. Now `--resume` and `export` refuse it before any cluster work, naming the file, and
    the fix names the run's latest whole checkpoint; a run's directory names that one too."""
    run = tmp_path / "demo-20261127-120000"
    names = ("checkpoint_2026-11-27_12-00-05.000001", "checkpoint_2026-11-27_12-00-09.000002")
    for name in names:
        save_checkpoint(str(run / name), {"w": torch.ones(64)}, {"state": {}}, state_at(1),
                        absolute_paths(load_job(DEMO)).to_dict())
    whole, damaged = (run / name for name in names)
    pristine = {f.name: f.read_bytes() for f in damaged.iterdir()}
    fix = f"fix: pass the run's latest whole checkpoint: --resume {whole}, or copy this one again"
    damages = {
        "model.pt cut short": (lambda: (damaged / "model.pt").write_bytes(pristine["model.pt"][:-200]),
                               "model.pt is cut short or is not a file torch.save wrote (File is not a zip file)"),
        "rng.pt not torch's": (lambda: (damaged / "rng.pt").write_text("hi\n"),
                               "rng.pt is cut short or is not a file torch.save wrote (File is not a zip file)"),
        "optimizer.pt left out": (lambda: (damaged / "optimizer.pt").unlink(),
                                  "optimizer.pt is not there (a copy made in part, or a run stopped while Ray Train "
                                  "copied it into storage)"),
        "state.json cut short": (lambda: (damaged / "state.json").write_bytes(pristine["state.json"][:40]),
                                 "state.json is not whole JSON ("),
        "job.json not text": (lambda: (damaged / "job.json").write_bytes(b"\xff\xfe"),
                              "job.json is not UTF-8 text (byte 0xff at offset 0)"),
    }
    for what, (damage, said) in damages.items():
        damage()
        with pytest.raises(ConfigError) as refused:
            checkpoint_path(str(damaged))
        assert str(refused.value).startswith(f"--resume {damaged}: {said}"), what
        assert str(refused.value).endswith(fix), what
        with pytest.raises(ConfigError, match="^--resume .*: " + said.split(" (")[0]):
            check_resume(absolute_paths(load_job(DEMO)), str(damaged))
        assert cli_main(["export", str(damaged), str(tmp_path / "hf")]) == 2
        assert capsys.readouterr().err.strip().endswith(f"yxanul-ray export {whole}, or copy this one again"), what
        with pytest.raises(ConfigError, match=f"the latest: --resume {whole}$"):  # the run's directory
            checkpoint_path(str(run))
        for name, content in pristine.items():
            (damaged / name).write_bytes(content)
        assert checkpoint_path(str(damaged)) == str(damaged)
    # The entrypoint, as a user runs it: one line, exit 2, no traceback.
    (damaged / "model.pt").write_bytes(pristine["model.pt"][:1000])
    proc = subprocess.run([sys.executable, "jobs/train.py", "--resume", str(damaged)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip() == (f"error: --resume {damaged}: model.pt is cut short or is not a file torch.save "
                                   f"wrote (File is not a zip file); {fix}")


def test_resume_given_a_run_directory_names_its_latest_checkpoint(tmp_path, capsys):
    """`--resume runs/demo-...` (the run's directory, not one of its checkpoints), with or without
    --config: exit 2 before any cluster work, the fix naming the latest checkpoint. Without
    --config it failed before on the run directory's missing job.json, as a config file."""
    run = tmp_path / "demo-20261127-120000"
    for name in ("checkpoint_2026-11-27_12-00-05.000001", "checkpoint_2026-11-27_12-00-09.000002"):
        save_checkpoint(str(run / name), {}, {}, state_at(1), absolute_paths(load_job(DEMO)).to_dict())
    latest = run / "checkpoint_2026-11-27_12-00-09.000002"
    for config in ([], ["--config", DEMO]):
        proc = subprocess.run([sys.executable, "jobs/train.py", *config, "--resume", str(run)], cwd=REPO,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert proc.stderr.strip() == (f"error: --resume {run}: not a yxanul-ray checkpoint (it holds no state.json); "
                                       f"fix: pass one of the 2 checkpoints in it, the latest: --resume {latest}")
    with pytest.raises(ConfigError, match="no such directory"):
        checkpoint_path(str(tmp_path / "nowhere"))
    # `yxanul-ray export` takes a checkpoint too, and says the same.
    assert cli_main(["export", str(run), str(tmp_path / "hf")]) == 2
    assert capsys.readouterr().err.strip().endswith(f"the latest: yxanul-ray export {latest}")

