"""Config loading: every shipped config, every bad-input case, --set overrides."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest

from tests.helpers import CONFIGS, REPO, base_config, write_yaml
from yxanul_ray.cli import main
from yxanul_ray.config import job_from_dict, load_job, scaled_budget_overrides
from yxanul_ray.specs import ConfigError, stage_stride

USER_STAGES = [
    ("Basic Patterns", 8, 10_000_000, (0.95, 0.05, 0.0)),
    ("Sentences", 16, 20_000_000, (0.95, 0.05, 0.0)),
    ("Paragraphs", 32, 30_000_000, (0.90, 0.08, 0.02)),
    ("Extended Context", 64, 40_000_000, (0.85, 0.10, 0.05)),
    ("Reasoning Development", 128, 75_000_000, (0.80, 0.12, 0.08)),
    ("Complex Patterns", 256, 100_000_000, (0.75, 0.15, 0.10)),
    ("Integration", 512, 125_000_000, (0.70, 0.18, 0.12)),
    ("Deep Understanding", 768, 150_000_000, (0.65, 0.20, 0.15)),
    ("Expert Reasoning", 1536, 200_000_000, (0.60, 0.22, 0.18)),
    ("Final Polish", 2048, 250_000_000, (0.55, 0.25, 0.20)),
]


def test_user_curriculum_is_exactly_the_users_table():
    job = load_job(os.path.join(CONFIGS, "yxanul_270m_progressive_curriculum.yaml"))
    assert job.curriculum.target_tokens == 1_000_000_000
    got = [(s.name, s.seq_len, s.tokens, tuple(s.mix[k] for k in ("fineweb", "math", "code")))
           for s in job.curriculum.stages]
    assert got == USER_STAGES
    assert job.sources["fineweb"].hf == "HuggingFaceFW/fineweb-edu"
    assert job.sources["fineweb"].hf_config == "sample-10BT"
    assert job.sources["math"].hf == "Yxanul/cc-math-finest"
    assert job.sources["code"].hf == "Yxanul/python-finest-pretrain"
    assert all(s.text_field == "text" for s in job.sources.values())
    for st in job.curriculum.stages:
        assert st.global_batch % 8 == 0 and st.global_batch % job.run.workers == 0
        assert 100_000 <= st.step_tokens <= 200_000  # sensible for a 270M model on H100s


def test_demo_config_keeps_stage_names_seq_lens_and_mixes(demo_paths_in_cwd):
    job = load_job(os.path.join(CONFIGS, "demo.yaml"))
    got = [(s.name, s.seq_len, tuple(s.mix[k] for k in ("fineweb", "math", "code")))
           for s in job.curriculum.stages]
    assert got == [(n, q, m) for n, q, _, m in USER_STAGES]
    assert job.curriculum.target_tokens < 10_000_000
    assert not job.run.use_gpu


def test_every_shipped_config_loads(demo_paths_in_cwd):
    # Job configs only: runtime_env.yaml is Ray's job runtime environment, tested in test_deploy.
    files = [f for f in glob.glob(os.path.join(CONFIGS, "*.yaml")) if not f.endswith("runtime_env.yaml")]
    assert len(files) >= 2
    for path in files:
        assert load_job(path).curriculum.stages


def test_target_tokens_scales_every_stage_and_stops_exactly_at_the_target():
    """The predecessor's --target-tokens N: the curriculum's shape kept, the sum exactly N."""
    path = os.path.join(CONFIGS, "yxanul_270m_progressive_curriculum.yaml")
    job = load_job(path)
    assert scaled_budget_overrides(job, job.curriculum.target_tokens) == []
    scaled = load_job(path, scaled_budget_overrides(job, 123_456_789))
    budgets = [st.tokens for st in scaled.curriculum.stages]
    assert sum(budgets) == scaled.curriculum.target_tokens == 123_456_789
    for st, n in zip(job.curriculum.stages[:-1], budgets[:-1]):  # rounded down; the last absorbs it
        assert n == st.tokens * 123_456_789 // job.curriculum.target_tokens
    assert [st.seq_len for st in scaled.curriculum.stages] == [st.seq_len for st in job.curriculum.stages]
    with pytest.raises(ConfigError, match=r"--target-tokens 9: each of the 10 stages needs at least one token"):
        scaled_budget_overrides(job, 9)


def _fails(tmp_path, data, *fragments, overrides=()):
    path = write_yaml(str(tmp_path / "job.yaml"), data)
    with pytest.raises(ConfigError) as err:
        load_job(path, list(overrides))
    msg = str(err.value)
    assert msg.startswith(path), msg
    for frag in fragments:
        assert frag in msg, msg
    return msg


def test_yaml_syntax_error_names_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("run:\n  workers: 2\n  name: [unclosed\nsources: {}\n")
    with pytest.raises(ConfigError) as err:
        load_job(str(path))
    assert "YAML syntax error" in str(err.value) and "line " in str(err.value)


def test_unknown_key(tmp_path, placeholder_sources):
    data = base_config(placeholder_sources)
    data["run"]["wrokers"] = 3
    _fails(tmp_path, data, "run.wrokers", "unknown key", "workers")


def test_unknown_top_level_key(tmp_path, placeholder_sources):
    data = base_config(placeholder_sources)
    data["trainer"] = {}
    _fails(tmp_path, data, "trainer", "unknown key")


def test_missing_key(tmp_path, placeholder_sources):
    data = base_config(placeholder_sources)
    del data["curriculum"]["stages"][1]["seq_len"]
    _fails(tmp_path, data, "curriculum.stages[1].seq_len", "missing required key")


def test_missing_section(tmp_path, placeholder_sources):
    data = base_config(placeholder_sources)
    del data["curriculum"]
    _fails(tmp_path, data, "curriculum", "missing")


def test_wrong_type(tmp_path, placeholder_sources):
    data = base_config(placeholder_sources)
    data["curriculum"]["stages"][0]["tokens"] = "lots"
    _fails(tmp_path, data, "curriculum.stages[0].tokens", "expected an integer")


def test_wrong_type_bool(tmp_path, placeholder_sources):
    data = base_config(placeholder_sources)
    data["run"]["use_gpu"] = "yes please"
    _fails(tmp_path, data, "run.use_gpu", "true or false")


def test_object_store_budget_too_small(tmp_path, placeholder_sources):
    data = base_config(placeholder_sources)
    data["data"]["object_store_mb_per_source"] = 4
    _fails(tmp_path, data, "data.object_store_mb_per_source", "must be >= 16")


def test_failure_budget_below_no_limit(tmp_path, placeholder_sources):
    data = base_config(placeholder_sources)
    data["run"]["max_failures"] = -2  # Ray Train and Ray's actor restarts take -1 as "no limit", nothing lower
    _fails(tmp_path, data, "run.max_failures", "must be >= 0, or -1")


def test_mix_not_summing_to_one(tmp_path, placeholder_sources):
    data = base_config(placeholder_sources)
    data["curriculum"]["stages"][2]["mix"]["fineweb"] = 0.45
    _fails(tmp_path, data, "curriculum.stages[2].mix", "sum to 0.95", "must sum to 1")


def test_mix_names_undeclared_source(tmp_path, placeholder_sources):
    data = base_config(placeholder_sources)
    data["curriculum"]["stages"][0]["mix"] = {"fineweb": 0.5, "wiki": 0.5}
    _fails(tmp_path, data, "curriculum.stages[0].mix.wiki", "no declared source", "fineweb, math, code")


@pytest.mark.parametrize("seq_len", [0, -8, 4096])
def test_bad_seq_len(tmp_path, placeholder_sources, seq_len):
    data = base_config(placeholder_sources)
    data["curriculum"]["stages"][1]["seq_len"] = seq_len
    _fails(tmp_path, data, "curriculum.stages[1].seq_len", "1..2048")


def test_batch_any_positive_size_multiple_of_8_in_fp8_stages(tmp_path, placeholder_sources):
    # Whole rows at any count (compare's flat arm takes 1-8 rows of 2048); FP8 keeps the
    # predecessor's multiple of 8.
    data = base_config(placeholder_sources)
    data["curriculum"]["stages"][0]["batch_size"] = 12
    assert load_job(write_yaml(str(tmp_path / "ok.yaml"), data)).curriculum.stages[0].global_batch == 12
    data["curriculum"]["stages"][0]["fp8"] = True
    _fails(tmp_path, data, "curriculum.stages[0].batch_size", "FP8 stage is not a multiple of 8")
    data["curriculum"]["stages"][0].update(batch_size=0, fp8=False)
    _fails(tmp_path, data, "curriculum.stages[0].batch_size", "must be > 0")


def test_tokens_per_step_alternative(tmp_path, placeholder_sources):
    data = base_config(placeholder_sources)
    del data["curriculum"]["stages"][0]["batch_size"]
    data["curriculum"]["stages"][0]["tokens_per_step"] = 128
    job = load_job(write_yaml(str(tmp_path / "ok.yaml"), data))
    assert job.curriculum.stages[0].global_batch == 16
    data["curriculum"]["stages"][0]["tokens_per_step"] = 100
    _fails(tmp_path, data, "curriculum.stages[0].tokens_per_step", "multiple of seq_len")


@pytest.mark.parametrize("tokens", [0, -5])
def test_tokens_not_positive(tmp_path, placeholder_sources, tokens):
    data = base_config(placeholder_sources)
    data["curriculum"]["stages"][0]["tokens"] = tokens
    _fails(tmp_path, data, "curriculum.stages[0].tokens", "> 0")


def test_budgets_not_adding_up(tmp_path, placeholder_sources):
    data = base_config(placeholder_sources)
    data["curriculum"]["target_tokens"] += 1
    _fails(tmp_path, data, "curriculum.target_tokens", "add up to 14,336")
    data["curriculum"]["target_tokens"] -= 2
    _fails(tmp_path, data, "curriculum.target_tokens", "add up to")


def test_duplicate_stage_names(tmp_path, placeholder_sources):
    data = base_config(placeholder_sources)
    data["curriculum"]["stages"][2]["name"] = "a"
    _fails(tmp_path, data, "curriculum.stages[2].name", "duplicate")


def test_local_path_matching_nothing(tmp_path, placeholder_sources):
    data = base_config(placeholder_sources)
    data["sources"]["math"]["path"] = str(tmp_path / "nowhere" / "*.parquet")
    _fails(tmp_path, data, "sources.math.path", "matches no file")


def test_source_needs_exactly_one_location(tmp_path, placeholder_sources):
    data = base_config(placeholder_sources)
    data["sources"]["math"]["hf"] = "someone/math"
    _fails(tmp_path, data, "sources.math", "both `hf` (someone/math) and `path` (")
    _fails(tmp_path, data, "sources.math", "--set sources.math.hf=null reads the path")
    del data["sources"]["math"]["hf"], data["sources"]["math"]["path"]
    _fails(tmp_path, data, "sources.math", "exactly one")


def test_bad_literal(tmp_path, placeholder_sources):
    data = base_config(placeholder_sources)
    data["sources"]["math"]["format"] = "csv"
    _fails(tmp_path, data, "sources.math.format", "'parquet', 'jsonl'")


def test_unknown_model_override(tmp_path, placeholder_sources):
    data = base_config(placeholder_sources)
    data["model"]["overrides"] = {"d_modle": 64}
    _fails(tmp_path, data, "model.overrides.d_modle", "unknown model field")


def test_numbers_that_would_train_as_nan_or_fail_in_the_workers_are_refused(tmp_path, placeholder_sources):
    """rope_theta 0 (or below) and a negative norm_eps made every logit NaN from the first step,
    silently; init_std 0 a model of zeros, a negative one a failure in every train worker."""
    for key, value in (("rope_theta", 0.0), ("rope_theta", -10000.0), ("norm_eps", -1e-6), ("init_std", 0.0),
                       ("init_std", -0.02)):
        data = base_config(placeholder_sources)
        data["model"]["overrides"] = {key: value}
        _fails(tmp_path, data, f"model.overrides.{key}: must be > 0, got {value}")
    # AdamW with eps 0 turns a parameter whose gradient is 0 into 0/0; a log interval of 0 was a
    # ZeroDivisionError in every train worker.
    for override, said in (("optimizer.eps=0", "optimizer.eps: must be > 0, got 0"),
                           ("run.log_every_steps=0", "run.log_every_steps: must be >= 1, got 0"),
                           ("curriculum.validation_rows=-3", "curriculum.validation_rows: must be >= 0 (0: no "
                                                             "validation), got -3")):
        _fails(tmp_path, base_config(placeholder_sources), said, overrides=[override])
    data = base_config(placeholder_sources)
    data["model"]["overrides"] = {"rope_theta": 500000.0, "norm_eps": 1e-5, "init_std": 0.01}
    assert load_job(write_yaml(str(tmp_path / "ok.yaml"), data)).model.shape.rope_theta == 500000.0


def test_fp8_shape_rejected_at_config_time(tmp_path, placeholder_sources):
    data = base_config(placeholder_sources)
    data["model"]["overrides"] = {"d_model": 40, "n_heads": 4, "n_kv_heads": 2}
    data["curriculum"]["stages"][0]["fp8"] = True
    _fails(tmp_path, data, "curriculum.stages[0].fp8", "multiple of 16")


def test_set_overrides_apply_and_validate(tmp_path, placeholder_sources):
    path = write_yaml(str(tmp_path / "job.yaml"), base_config(placeholder_sources))
    job = load_job(path, ["run.workers=4", "curriculum.stages.1.seq_len=32", "optimizer.peak_lr=3e-4",
                          "curriculum.stages.c.lr_scale=0.5", "model.overrides.d_model=64"])
    assert job.run.workers == 4
    assert job.curriculum.stages[1].seq_len == 32
    assert job.optimizer.peak_lr == 3e-4
    assert job.curriculum.stages[2].lr_scale == 0.5
    assert job.model.shape.d_model == 64
    with pytest.raises(ConfigError, match="curriculum.stages\\[0\\].batch_size"):
        load_job(path, ["curriculum.stages.0.batch_size=-8"])
    with pytest.raises(ConfigError, match="run.bogus"):
        load_job(path, ["run.bogus=1"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_job(path, ["run.workers"])
    with pytest.raises(ConfigError, match="no list item named"):
        load_job(path, ["curriculum.stages.zzz.tokens=5"])
    # A list index in brackets, as other tools write it. Before: "curriculum.stages[0]: unknown key".
    job = load_job(path, ["curriculum.stages[1].seq_len=64", "curriculum.stages[-1].lr_scale=0.25"])
    assert job.curriculum.stages[1].seq_len == 64 and job.curriculum.stages[-1].lr_scale == 0.25


def test_overlap_policy_gives_stride(tmp_path, placeholder_sources):
    data = base_config(placeholder_sources)
    data["curriculum"]["overlap"] = 0.5
    data["curriculum"]["overlap_above_seq_len"] = 8
    job = load_job(write_yaml(str(tmp_path / "job.yaml"), data))
    strides = [stage_stride(job.curriculum, s) for s in job.curriculum.stages]
    assert strides == [8, 8, 16]


def test_cli_exit_code_2_before_torch_or_ray(tmp_path, placeholder_sources):
    data = base_config(placeholder_sources)
    data["curriculum"]["stages"][0]["mix"]["fineweb"] = 0.9
    path = write_yaml(str(tmp_path / "job.yaml"), data)
    code = (
        "import sys; from yxanul_ray.cli import main; rc = main(['plan', sys.argv[1]]); "
        "assert 'torch' not in sys.modules and 'ray' not in sys.modules, 'heavy import'; sys.exit(rc)"
    )
    proc = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2, proc.stderr
    assert "curriculum.stages[0].mix" in proc.stderr and path in proc.stderr
    assert proc.stderr.count("\n") == 1  # one message, no traceback


def test_cli_missing_file(capsys):
    assert main(["plan", "/nonexistent/job.yaml"]) == 2
    assert "no such config file" in capsys.readouterr().err


def test_a_config_path_that_is_no_text_file_is_one_line_naming_it(tmp_path, capsys):
    """A directory (a run's, say) or a binary file given as the config: exit 2 and one line that
    names the path and the fix, not an IsADirectoryError or UnicodeDecodeError traceback."""
    folder, binary = tmp_path / "run_dir", tmp_path / "model.yaml"
    folder.mkdir()
    binary.write_bytes(b"run:\n\x00\xff\xfe")
    assert main(["plan", str(folder)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {folder}: a directory, not a config file; fix: the path of a YAML config (configs/demo.yaml, say), "
        "or --resume for a run's checkpoint")
    assert main(["plan", str(binary)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {binary}: not UTF-8 text (byte 0xff at offset 6), so not a YAML config; fix: the path of the "
        "config, or save it as UTF-8")


def test_ctrl_c_before_a_run_begins_is_one_line_and_exit_130():
    """Ctrl-C while a command reads its config or data (before any run could name a checkpoint):
    the user's own stop, so one line and the shell's code for it, not a traceback."""
    # SIGINT handled as in a terminal: a shell's background job (a CI started so) inherits it ignored.
    code = ("import os, signal, sys; from yxanul_ray.cli import reporting_errors; "
            "signal.signal(signal.SIGINT, signal.default_int_handler); "
            "sys.exit(reporting_errors(lambda: os.kill(os.getpid(), signal.SIGINT) or 0))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr == "stopped (interrupted)\n"


def test_every_float_field_must_be_finite_and_every_integer_a_real_integer(tmp_path, placeholder_sources):
    """One rule for all fields (config._build), model.overrides included: NaN and infinity are
    refused wherever a number goes, and a boolean is not an integer."""
    for override, said in (("optimizer.peak_lr=.nan", "optimizer.peak_lr: nan is not a finite number"),
                           ("optimizer.betas=[0.9, .inf]", "optimizer.betas[1]: inf is not a finite number"),
                           ("run.cpus_per_worker=-.inf", "run.cpus_per_worker: -inf is not a finite number"),
                           ("curriculum.stages.0.mix.fineweb=.nan", "curriculum.stages[0].mix.fineweb: nan is not"),
                           ("curriculum.stages.0.lr_scale=.inf", "curriculum.stages[0].lr_scale: inf is not"),
                           ("model.overrides.rope_theta=.inf", "model.overrides.rope_theta: inf is not a finite"),
                           ("model.overrides.norm_eps=.nan", "model.overrides.norm_eps: nan is not a finite"),
                           ("optimizer.warmup_tokens=.inf", "optimizer.warmup_tokens: expected an integer, got inf"),
                           ("run.workers=true", "run.workers: expected an integer or a list of 2 integers, got True"),
                           ("model.overrides.n_layers=false", "model.overrides.n_layers: expected an integer")):
        _fails(tmp_path, base_config(placeholder_sources), said, overrides=[override])
    job = load_job(write_yaml(str(tmp_path / "ok.yaml"), base_config(placeholder_sources)),
                   ["model.overrides.n_layers=2.0", "model.overrides.rope_theta=500000"])
    assert job.model.overrides == {"n_layers": 2, "rope_theta": 500000.0}


def test_workers_is_a_count_or_an_elastic_range(tmp_path, placeholder_sources):
    path = write_yaml(str(tmp_path / "job.yaml"), base_config(placeholder_sources))
    fixed = load_job(path, ["run.workers=2"])
    assert (fixed.run.elastic, fixed.run.min_workers, fixed.run.max_workers) == (False, 2, 2)
    elastic = load_job(path, ["run.workers=[1, 2]"])
    assert elastic.run.workers == (1, 2) and elastic.run.elastic and elastic.run.min_workers == 1
    assert job_from_dict(json.loads(json.dumps(elastic.to_dict())), "<job.json>").run.workers == (1, 2)
    for bad, said in (("[2, 1]", "1 <= min <= max; got [2, 1]"), ("[0, 2]", "got [0, 2]"),
                      ("[1, 2, 3]", "expected an integer or a list of 2 integers")):
        _fails(tmp_path, base_config(placeholder_sources), said, overrides=[f"run.workers={bad}"])
