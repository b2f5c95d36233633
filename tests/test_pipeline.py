"""The Ray Data pipeline on a real local cluster: real parquet/jsonl files, the real GPT-2 BPE."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.pipeline_helpers import (
    TOK,
    as_raw,
    demo_job,
    next_cursors,
    one_source_job,
    run_stage,
    stream_tokens,
    write_docs,
)
from yxanul_ray.config import job_from_dict
from yxanul_ray.hub import SourceUnavailable, content_fingerprints, resolve_files
from yxanul_ray.local_data import local_stage
from yxanul_ray.mixing import PAD_SOURCE
from yxanul_ray.stage_data import read_spec

pytestmark = pytest.mark.ray


def rows_of(per_rank) -> np.ndarray:
    return np.concatenate([b["tokens"] for rank in per_rank for b in rank])


def test_eos_placement_and_no_lost_tokens(ray_cluster, tmp_path, ray_packers):
    texts = [f"Document number {i} says: " + "lorem ipsum " * (i % 7 + 1) for i in range(40)]
    write_docs(str(tmp_path / "a" / "part-0.parquet"), texts[:25])
    write_docs(str(tmp_path / "a" / "part-1.parquet"), texts[25:])
    stream = stream_tokens(texts)
    seq_len = 8
    usable = (len(stream) - 1) // seq_len * seq_len
    job = one_source_job(str(tmp_path / "a" / "*.parquet"), seq_len=seq_len, tokens=usable, batch=8)
    _, per_rank, end = run_stage(job, 0, {}, 1, ray_packers)
    rows = rows_of(per_rank)
    assert rows.shape[1] == seq_len + 1
    targets = rows[:, 1:].ravel()
    # Every token of every document, in order, with EOS after each; nothing lost across
    # row groups or files (masked positions of the final partial step are still in the rows).
    assert (targets[:usable] == stream[1:1 + usable]).all()
    stats = end["a"]["stats"]
    assert stats["documents"] == 40 and stats["eos"] == int((targets == TOK.eos_id).sum())


def test_no_document_repeated_across_stages(ray_cluster, tmp_path, ray_packers):
    texts = [f"Unique doc {i}: " + " ".join(f"w{i}x{j}" for j in range(i % 5 + 3)) for i in range(120)]
    write_docs(str(tmp_path / "a" / "part-0.parquet"), texts[:30], row_group_size=7)
    write_docs(str(tmp_path / "a" / "part-1.parquet"), texts[30:], row_group_size=7)
    stream = stream_tokens(texts)
    stage2 = {"name": "s1", "seq_len": 16, "tokens": 512, "batch_size": 8, "mix": {"a": 1.0}}
    stage3 = {"name": "s2", "seq_len": 4, "tokens": 96, "batch_size": 8, "mix": {"a": 1.0}}
    job = one_source_job(str(tmp_path / "a" / "*.parquet"), seq_len=8, tokens=512, extra_stages=[stage2, stage3])
    cursors, trained = {}, []
    for k in range(3):
        _, per_rank, end = run_stage(job, k, cursors, 1, ray_packers)
        trained.append(rows_of(per_rank)[:, 1:].ravel())
        cursors = next_cursors(end, cursors)
        assert end["a"]["stats"]["wraps"] == 0
    targets = np.concatenate(trained)
    assert (targets == stream[1:1 + len(targets)]).all()  # each stage starts where the last stopped
    assert cursors["a"].file_pos == 1  # the cursor crossed into the second file


def test_wraps_when_a_source_runs_dry(ray_cluster, tmp_path, ray_packers):
    texts = [f"tiny corpus doc {i}" for i in range(6)]
    write_docs(str(tmp_path / "a" / "part-0.parquet"), texts[:3])
    write_docs(str(tmp_path / "a" / "part-1.parquet"), texts[3:])
    per_epoch = len(stream_tokens(texts))
    job = one_source_job(str(tmp_path / "a" / "*.parquet"), seq_len=8, tokens=8 * 8 * ((3 * per_epoch) // 64 + 1))
    _, per_rank, end = run_stage(job, 0, {}, 1, ray_packers)
    stats = end["a"]["stats"]
    assert stats["wraps"] >= 3
    assert end["a"]["cursor"]["epoch"] == stats["wraps"]
    assert rows_of(per_rank).shape[0] * 8 >= job.curriculum.stages[0].tokens


def piece_tokens(text: str, max_chars: int) -> np.ndarray:
    """A document's tokens as the pipeline makes them: pieces of max_chars, then one EOS."""
    pieces = [text[i:i + max_chars] for i in range(0, len(text), max_chars)]
    ids = [t for p in TOK.encode_batch(pieces) for t in p]
    return np.array(ids + [TOK.eos_id], dtype=np.int32)


def test_every_bad_row_kind_is_counted(ray_cluster, tmp_path, ray_packers):
    good = [f"A good document {i} with several words in it." for i in range(12)]
    long_doc = "word " * 500  # 2,500 characters: split into three 1,000-character pieces
    write_docs(str(tmp_path / "p" / "part-0.parquet"), [good[0], None, "", "   ", good[1], long_doc, good[2]])
    write_docs(str(tmp_path / "p" / "part-1.parquet"), [good[3].encode(), b"\xff\xfe broken", good[4].encode()],
               binary=True)
    # Between them in file order: a shard cut short (no parquet footer), and one whose second row
    # group's data is overwritten (its first row group, good[8] to good[11], reads; the rest cannot).
    (tmp_path / "p" / "part-0a.parquet").write_bytes((tmp_path / "p" / "part-0.parquet").read_bytes()[:300])
    half_bad = str(tmp_path / "p" / "part-0b.parquet")
    write_docs(half_bad, good[8:12] + ["lost " * 30] * 4, row_group_size=4)
    chunk = pq.ParquetFile(half_bad).metadata.row_group(1).column(0)
    chunk_end = (chunk.dictionary_page_offset or chunk.data_page_offset) + chunk.total_compressed_size
    with open(half_bad, "r+b") as f:  # the data page's body, past its header
        f.seek(chunk.data_page_offset + 16)
        f.write(b"\xa5" * (chunk_end - chunk.data_page_offset - 20))
    lines = [json.dumps({"text": good[5]}).encode(), b"{not json", json.dumps({"text": 42}).encode(),
             json.dumps({"body": "no text field"}).encode(), json.dumps({"text": None}).encode(),
             b'{"text": "bad \xff utf8"}', json.dumps({"text": good[6]}).encode(),
             json.dumps({"text": good[7]}).encode()]
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "part-0.jsonl").write_bytes(b"\n".join(lines) + b"\n")

    def run(path, fmt, docs):
        # A budget that ends inside the last good document: every bad row before it is passed.
        stream_len = sum(len(piece_tokens(d, 1000)) for d in docs)
        tokens = (stream_len - 3) // 4 * 4
        job = one_source_job(path, fmt=fmt, seq_len=4, tokens=tokens, batch=8, max_doc_chars=1000)
        _, _, end = run_stage(job, 0, {}, 1, ray_packers)
        assert end["a"]["stats"]["wraps"] == 0
        return end["a"]["stats"]

    stats = run(str(tmp_path / "p" / "*.parquet"), "parquet", [good[0], good[1], long_doc, good[2], *good[8:12],
                                                                good[3], good[4]])
    assert stats["bad"] == {"null": 1, "empty": 2, "split_long_doc": 1, "invalid_utf8": 1, "unreadable_file": 2}
    assert stats["documents"] == 10
    stats = run(str(tmp_path / "j" / "*.jsonl"), "jsonl", good[5:8])
    assert stats["bad"] == {"malformed_json": 1, "non_string": 1, "missing_field": 1, "null": 1,
                            "invalid_utf8": 1}


def test_identical_output_for_identical_seeds(ray_cluster, demo_corpus, ray_packers):
    job = demo_job(demo_corpus, "run.seed=5", "data.object_store_mb_per_source=32", scale=20)
    sd, a, _ = run_stage(job, 3, {}, 1, ray_packers)
    _, b, _ = run_stage(job, 3, {}, 1, ray_packers)
    # Each source's pipeline runs under its object-store budget (Ray Data's backpressure).
    assert {ds.context.execution_options.resource_limits.object_store_memory
            for ds in sd.datasets.values()} == {32 << 20}
    assert len(a[0]) == len(b[0])
    for x, y in zip(a[0], b[0]):
        assert (x["tokens"] == y["tokens"]).all() and (x["source"] == y["source"]).all()


def test_exact_mix_for_every_stage_of_the_curriculum(ray_cluster, demo_corpus, ray_packers):
    """Ten stages, two workers: every global step (the ranks' slices joined in rank order) holds
    each source within one row of its share, counted in tokens per source, and every stage
    trains exactly its budget; a last step that does not divide among the ranks ends in padding."""
    world = 2
    job = demo_job(demo_corpus, scale=10)
    ids = {n: i for i, n in enumerate(job.sources)}
    files = {s: resolve_files(spec) for s, spec in job.sources.items()}
    cursors: dict = {}
    for k, st in enumerate(job.curriculum.stages):
        sd, per_rank, end = run_stage(job, k, cursors, world, ray_packers, files)
        cursors = next_cursors(end, cursors)
        assert len(per_rank[0]) == len(per_rank[1]) == sd.plan.steps
        tokens_by_source = dict.fromkeys(job.sources, 0)
        for step in range(sd.plan.steps):
            sources = np.concatenate([rank[step]["source"] for rank in per_rank])
            real = int((sources != PAD_SOURCE).sum())
            assert real == sd.plan.step_rows(step) and len(sources) - real < world
            assert len(per_rank[0][step]["source"]) == len(per_rank[1][step]["source"])
            for name, w in st.mix.items():
                n = int((sources == ids[name]).sum())
                assert abs(n - w * real) < 1.0 + 1e-9, (st.name, step, name, n)
                tokens_by_source[name] += n * st.seq_len
        trained = sum(tokens_by_source.values()) - sd.plan.last_masked_tokens
        assert trained == st.tokens
        for name, w in st.mix.items():
            assert abs(tokens_by_source[name] - w * sum(tokens_by_source.values())) <= 2 * st.seq_len
            if w == 0:
                assert tokens_by_source[name] == 0


def test_ray_path_makes_the_in_process_batches_row_for_row(ray_cluster, demo_corpus, ray_packers):
    """The Ray Data pipeline (read and tokenize tasks, the pack step and the StagePackers actor,
    a split) and the same functions called in one process (local_data, which the orchestration
    benchmark's plain loop trains on) give the same batches and end reports, stage after stage;
    split among two workers (stages 2 and 4), the ranks' slices joined are the same steps: which
    rows form a step does not depend on the world size."""
    job = demo_job(demo_corpus, scale=20)
    files = {s: resolve_files(spec) for s, spec in job.sources.items()}
    ray_cursors: dict = {}
    local_cursors: dict = {}
    for k in range(4):
        world = 1 + k % 2
        _, per_rank, ray_end = run_stage(job, k, ray_cursors, world, ray_packers, files)
        batches, sources = local_stage(job, k, local_cursors, files, TOK.eos_id)
        local = list(batches)
        assert len(local) == len(per_rank[0]) > 0
        for step, b in enumerate(local):
            a = {key: np.concatenate([rank[step][key] for rank in per_rank]) for key in ("tokens", "source")}
            real = a["source"] != PAD_SOURCE
            assert np.array_equal(a["tokens"][real], b["tokens"]), (k, step)
            assert np.array_equal(a["source"][real], b["source"]), (k, step)
        local_end = {s: src.end_report() for s, src in sources.items()}
        assert local_end == ray_end
        ray_cursors, local_cursors = next_cursors(ray_end, ray_cursors), next_cursors(local_end, local_cursors)


def test_a_source_at_a_storage_uri_reads_what_the_same_local_files_give(ray_cluster, demo_corpus, ray_packers):
    """`path: <scheme>://.../*.parquet` (a corpus in a bucket, reachable from every node) is listed
    and read through pyarrow.fs: file:// URIs run that code on the demo corpus. The Ray path's
    first stage from the URIs is the in-process stage from the plain paths, row for row; the
    file lists and the held-out documents are the same."""
    from yxanul_ray.manifest import manifest_now
    from yxanul_ray.readers import read_holdout_docs

    plain = demo_job(demo_corpus)
    at_uri = demo_job(demo_corpus, *[f"sources.{s}.path=file://{demo_corpus}/{s}/*.parquet"
                                     for s in ("fineweb", "math", "code")])
    plain_files = {s: resolve_files(spec) for s, spec in plain.sources.items()}
    uri_files = {s: resolve_files(spec) for s, spec in at_uri.sources.items()}
    for s in plain.sources:
        assert uri_files[s].kind == "uri" and plain_files[s].kind == "local"
        plain_manifest = manifest_now(plain.sources[s], plain_files[s])
        assert manifest_now(at_uri.sources[s], uri_files[s])["files"] == plain_manifest["files"]
        assert all(len(f) == 3 for f in plain_manifest["files"])
        assert read_holdout_docs(read_spec(at_uri, uri_files[s])) == read_holdout_docs(read_spec(plain, plain_files[s]))
    _, per_rank, _ = run_stage(at_uri, 0, {}, 1, ray_packers, uri_files)
    batches, _ = local_stage(plain, 0, {}, plain_files, TOK.eos_id)
    local = list(batches)
    assert len(local) == len(per_rank[0]) > 0
    for a, b in zip(per_rank[0], local):
        assert np.array_equal(a["tokens"], b["tokens"]) and np.array_equal(a["source"], b["source"])
    with pytest.raises(SourceUnavailable, match=r"source fineweb: path 'file://.*/none/\*.parquet' matches no file"):
        resolve_files(demo_job(demo_corpus, f"sources.fineweb.path=file://{demo_corpus}/none/*.parquet")
                      .sources["fineweb"])


def test_hub_code_path_on_a_local_mirror(ray_cluster, tmp_path, ray_packers):
    """The hf:// listing (dataset card configs -> data_files globs) and reader, on local files."""
    repo = tmp_path / "datasets" / "org" / "corpus"
    texts = [f"mirrored doc {i} " * 3 for i in range(30)]
    write_docs(str(repo / "sample" / "10BT" / "000_00000.parquet"), texts[:15])
    write_docs(str(repo / "sample" / "10BT" / "001_00000.parquet"), texts[15:])
    write_docs(str(repo / "data" / "other.parquet"), ["not this config"])
    (repo / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/*\n"
        "- config_name: sample-10BT\n  data_files:\n  - split: train\n    path: sample/10BT/*\n---\n# card\n")
    job = job_from_dict({
        "sources": {"a": {"hf": "org/corpus", "hf_config": "sample-10BT", "hf_mirror": str(tmp_path),
                          "validation_docs": 0}},
        "curriculum": {"target_tokens": 64, "stages": [
            {"name": "s", "seq_len": 8, "tokens": 64, "batch_size": 8, "mix": {"a": 1.0}}]},
        "model": {"preset": "tiny"},
    }, "<test>")
    files = resolve_files(job.sources["a"])
    assert files.kind == "hf" and [os.path.basename(p) for p in files.paths] == ["000_00000.parquet",
                                                                                 "001_00000.parquet"]
    # The listing's sizes (which plan wrap-around reads and go into the checkpoints' file lists).
    assert files.sizes == tuple(os.path.getsize(repo / "sample" / "10BT" / os.path.basename(p)) for p in files.paths)
    # Their content fingerprints (in the file lists too), read through the mirror, are the files' own.
    direct = resolve_files(one_source_job(str(repo / "sample" / "10BT" / "*.parquet")).sources["a"])
    assert all(content_fingerprints(files)) and content_fingerprints(files) == content_fingerprints(direct)
    _, per_rank, _ = run_stage(job, 0, {}, 1, ray_packers, {"a": files})
    assert (rows_of(per_rank)[:, 1:].ravel()[:64] == stream_tokens(texts)[1:65]).all()


def test_missing_text_field_names_source_file_and_field(ray_cluster, tmp_path, ray_packers):
    write_docs(str(tmp_path / "a" / "part-0.parquet"), ["some text"])
    job = one_source_job(str(tmp_path / "a" / "*.parquet"))
    job = job_from_dict({**as_raw(job), "sources": {"a": {"path": str(tmp_path / "a" / "*.parquet"),
                                                           "text_field": "content", "validation_docs": 0}}})
    with pytest.raises(Exception) as err:
        run_stage(job, 0, {}, 1, ray_packers)
    assert "source a" in str(err.value) and "'content'" in str(err.value) and "part-0.parquet" in str(err.value)


def test_stage_packers_refuse_gaps_and_survive_a_restart(ray_cluster):
    """The run's one packing actor: blocks must come 0, 1, 2, ...; after Ray restarts it, a
    stream it did not see begin is refused (that stage fails and is rebuilt), a batch read of a
    build begun before the restart fails at once instead of waiting for rows that are gone, and
    a rebuilt one packs the same rows as before."""
    import ray

    from tests.token_blocks import token_block
    from yxanul_ray.cursors import SourceCursor
    from yxanul_ray.packing import PackSpec
    from yxanul_ray.stage_packers import StagePackers

    packers = StagePackers.remote()
    spec = PackSpec("a", source_id=0, seq_len=4, stride=4, eos_id=0, max_rows=3, start=SourceCursor(), reads=2)
    blocks = [token_block([(0, 0, 0), (0, 0, 1)]), token_block([(0, 0, 2), (0, 1, 0)])]
    ray.get(packers.begin.remote("build-1"))
    assert ray.get(packers.holds.remote("build-1"))
    first = ray.get(packers.pack.remote("build-1", spec, None, blocks[0], 0))
    with pytest.raises(ray.exceptions.RayTaskError, match="block 2 of a stage's stream arrived when block 1 was due"):
        ray.get(packers.pack.remote("build-1", spec, None, blocks[1], 2))

    ray.kill(packers, no_restart=False)
    with pytest.raises(ray.exceptions.RayTaskError, match="never saw the stream begin"):
        for _ in range(300):  # calls fail with RayActorError until the restarted actor is up
            try:
                ray.get(packers.pack.remote("build-1", spec, None, blocks[1], 1))
            except ray.exceptions.RayActorError:
                time.sleep(0.1)
    assert not ray.get(packers.holds.remote("build-1"))  # what the coordinator asks before handing a build out
    with pytest.raises(ray.exceptions.RayTaskError, match="restarted and lost this stage build's rows"):
        ray.get(packers.take.remote("build-1", None, 0), timeout=30)
    with pytest.raises(ray.exceptions.RayTaskError, match="restarted and lost this stage build's rows"):
        ray.get(packers.pack.remote("build-1", spec, None, blocks[0], 0), timeout=30)

    ray.get(packers.begin.remote("build-2"))
    rebuilt = [ray.get(packers.pack.remote("build-2", spec, None, b, i)) for i, b in enumerate(blocks)]
    np.testing.assert_array_equal(rebuilt[0]["tokens"], first["tokens"])
    assert rebuilt[1]["tokens"].shape == (1, 5)
    end = ray.get(packers.wait.remote("build-2", ["a"]))
    assert end["a"]["stats"]["rows"] == 3


def test_the_coordinator_reads_the_drivers_listing_and_lists_again_after_a_restart(ray_cluster, demo_corpus,
                                                                                    tmp_path):
    """The driver lists the sources before any cluster work (manifest.list_sources) and hands the
    listing to the coordinator, which reads those files without listing them again: a file
    added since is not in the run's lists. Restarted by Ray after its process died, the
    coordinator lists again, so `join` compares a checkpoint with the files as they are now."""
    import ray

    from yxanul_ray.coordinator import CurriculumCoordinator
    from yxanul_ray.manifest import list_sources

    corpus = tmp_path / "demo"
    shutil.copytree(demo_corpus, corpus)
    job = demo_job(str(corpus))
    listing = list_sources(job)
    shutil.copy(corpus / "code" / "part-00000.parquet", corpus / "code" / "part-00009.parquet")
    coord = CurriculumCoordinator.options(max_restarts=1).remote(job.to_dict(), 2, listing)
    try:
        files = ray.get(coord.state.remote())["files"]
        assert files == listing.manifests and len(files["code"]["files"]) == 4
        pid = ray.get(coord.__ray_call__.remote(lambda self: os.getpid()))
        os.kill(pid, signal.SIGKILL)  # the coordinator this test started
        deadline = time.monotonic() + 120
        while True:  # calls fail until Ray has restarted the actor in a new process
            try:
                if ray.get(coord.__ray_call__.remote(lambda self: os.getpid()), timeout=30) != pid:
                    break
            except ray.exceptions.RayActorError:
                pass
            assert time.monotonic() < deadline, "the coordinator was not restarted"
            time.sleep(0.5)
        files = ray.get(coord.state.remote())["files"]
        assert [name for name, *_ in files["code"]["files"]][-1] == "part-00009.parquet"
        assert files["math"] == listing.manifests["math"]
    finally:
        ray.kill(coord)


def test_prepared_stages_run_before_any_worker_asks_and_are_the_ones_handed_out(ray_cluster, demo_corpus):
    """The driver's `prepare(3)` builds and starts the first three stages' pipelines while Ray
    Train starts: with no worker asking, those three stages are produced (their end cursors
    recorded), the fourth is built but does not run, and the ranks then get the prepared
    stage's batches, exact to the mix."""
    import ray

    from yxanul_ray.coordinator import CurriculumCoordinator

    world = 2
    job = demo_job(demo_corpus, scale=10)
    coord = CurriculumCoordinator.remote(job.to_dict(), world)
    try:
        ray.get(coord.prepare.remote(3))
        _wait_for_stage_end(coord, 3, "the prepared stages were not produced without a request")
        time.sleep(2.0)  # stage 4 is built by now; it must not run before a worker asks for it
        assert "4" not in ray.get(coord.state.remote())["stage_cursors"]
        _assert_stage_read_exactly(coord, job, 0, world)
    finally:
        ray.kill(coord)


def test_builds_lost_with_a_restart_of_the_packing_actor_are_built_again(ray_cluster, demo_corpus):
    """The run's StagePackers actor dies after the first three stages were produced (none read
    yet) and the fourth was built: Ray restarts it empty. The coordinator hands out no build the
    restart lost: stage 1 (all its rows were in the dead actor) and stage 4 (its end would
    never have been reported) are built again, read exactly to the mix, and stage 4's end is
    recorded, so a fifth stage could be built. Before, reading stage 1 waited forever."""
    import ray

    from yxanul_ray.coordinator import CurriculumCoordinator

    world, name = 2, f"test-coordinator-{time.time_ns()}"
    job = demo_job(demo_corpus, scale=10)
    coord = CurriculumCoordinator.options(name=name).remote(job.to_dict(), world)
    try:
        ray.get(coord.prepare.remote(3))
        _wait_for_stage_end(coord, 3, "the prepared stages were not produced")
        time.sleep(2.0)  # stage 4 is built (registered with the packers) by now
        packers = ray.get_actor(f"{name}-packers")
        ray.kill(packers, no_restart=False)
        assert not ray.get(packers.holds.remote("any build"), timeout=120)  # answered by the restarted actor
        _assert_stage_read_exactly(coord, job, 0, world, group="after-restart", timeout_s=120)
        _assert_stage_read_exactly(coord, job, 3, world, group="after-restart", timeout_s=120)
        _wait_for_stage_end(coord, 4, "stage 4's end was never recorded after the restart")
    finally:
        ray.kill(coord)


def test_a_restarted_coordinator_continues_from_the_checkpoint_the_workers_hand_it(ray_cluster, demo_corpus):
    """Ray restarts the coordinator after its process dies, empty. The worker group that joined
    the dead one is refused at once (it restarts from its checkpoint instead of training on
    with state no checkpoint could hold). The restarted group joins with its checkpoint's
    curriculum state, taken mid-stage 2 before stage 2's sources had reported: stage 2 is
    rebuilt from that state's cursors, from the checkpoint's step, and ends where the first
    incarnation's stage 2 ended, with the same source stats (the skipped rows are re-made)."""
    import ray

    from yxanul_ray.coordinator import CurriculumCoordinator
    from yxanul_ray.stage_data import iter_worker_batches

    world, name = 2, f"test-coordinator-{time.time_ns()}"
    job = demo_job(demo_corpus, scale=1)  # stage 2 in 4 steps, so there is a mid-stage to resume at
    coord = CurriculumCoordinator.options(name=name, max_restarts=1).remote(job.to_dict(), world)
    try:
        first = ray.get(coord.join.remote({}))
        ray.get(coord.prepare.remote(2))
        _wait_for_stage_end(coord, 2, "the first two stages were not produced")
        undisturbed = ray.get(coord.state.remote(2, first))
        checkpoint = {"stage_cursors": {k: undisturbed["stage_cursors"][k] for k in ("0", "1")},
                      "stage_stats": {"0": undisturbed["stage_stats"]["0"]}}

        ray.kill(coord, no_restart=False)  # its process ends; Ray starts it again
        deadline = time.time() + 120
        while True:  # calls made while Ray restarts it fail as "unavailable" (a worker restarts on those too)
            try:
                with pytest.raises(ray.exceptions.RayTaskError, match="coordinator was restarted"):
                    ray.get(coord.stage_input.remote(1, 0, 0, "old-group", first), timeout=120)
                break
            except ray.exceptions.ActorUnavailableError:
                assert time.time() < deadline, "the coordinator was not restarted"
                time.sleep(0.5)
        second = ray.get(coord.join.remote(checkpoint), timeout=120)
        assert second != first

        got = [ray.get(coord.stage_input.remote(1, rank, 1, "new-group", second), timeout=120)
               for rank in range(world)]
        with ThreadPoolExecutor(max_workers=world) as pool:
            reads = [pool.submit(lambda g=g: list(iter_worker_batches(g["iterator"], g["schedule"], g["source_ids"],
                                                                      start_step=g["start_step"], world=g["world"])))
                     for g in got]
            per_rank = [r.result(timeout=300) for r in reads]
        assert len(per_rank[0]) == len(per_rank[1]) == len(got[0]["schedule"].step_rows) - 1 > 0
        resumed = ray.get(coord.state.remote(2, second), timeout=120)
        assert resumed["stage_cursors"]["2"] == undisturbed["stage_cursors"]["2"]
        assert resumed["stage_stats"]["1"] == undisturbed["stage_stats"]["1"]
    finally:
        ray.kill(coord)


def test_a_restarted_coordinator_refuses_a_checkpoint_whose_files_changed(ray_cluster, demo_corpus, tmp_path):
    """A checkpoint records its sources' file lists with the cursors that index them. A file
    added to a source while the run went on shifts the list a restarted coordinator makes: it
    refuses that checkpoint's worker group, naming the file, instead of reading other documents
    at the saved cursors; so is a checkpoint tokenized otherwise."""
    import ray

    from yxanul_ray.coordinator import CurriculumCoordinator

    corpus = tmp_path / "corpus"
    shutil.copytree(demo_corpus, corpus)
    job = demo_job(str(corpus))
    coord = CurriculumCoordinator.options(name=f"test-coordinator-{time.time_ns()}", max_restarts=1).remote(
        job.to_dict(), 2)
    try:
        first = ray.get(coord.join.remote({}))
        checkpoint = ray.get(coord.state.remote(0, first))
        assert [name for name, _size, _fingerprint in checkpoint["files"]["math"]["files"]] == [
            f"part-0000{i}.parquet" for i in range(4)]
        assert ray.get(coord.join.remote(checkpoint)) == first  # the same files: joined
        assert checkpoint["tokenizer"] == "gpt2"
        with pytest.raises(ray.exceptions.RayTaskError, match="data.tokenizer 'gpt2': not the content the run"):
            ray.get(coord.join.remote({**checkpoint, "tokenizer": "sha256:" + "0" * 64}))
        # An earlier version recorded a Hub tokenizer's id, not its content: not comparable here
        # (the driver compared the names at --resume), so joined.
        assert ray.get(coord.join.remote({**checkpoint, "tokenizer": "org/tok"})) == first

        shutil.copy(corpus / "math" / "part-00000.parquet", corpus / "math" / "part-00000a.parquet")
        ray.kill(coord, no_restart=False)  # restarted, it lists the sources again
        deadline = time.time() + 120
        while True:
            try:
                joined = ray.get(coord.join.remote(checkpoint), timeout=120)
                assert joined == first, "the restarted coordinator took a checkpoint of other files"
            except ray.exceptions.ActorUnavailableError:
                pass  # being restarted
            except ray.exceptions.RayTaskError as e:
                assert "math: 4 files then, 5 now; new: 'part-00000a.parquet'" in str(e)
                break
            assert time.time() < deadline, "the coordinator was not restarted"
            time.sleep(0.5)  # the old process answered: Ray's kill had not reached it yet
    finally:
        ray.kill(coord)


def _wait_for_stage_end(coord, stages_ended: int, message: str, timeout_s: float = 120) -> None:
    import ray

    deadline = time.time() + timeout_s
    while str(stages_ended) not in ray.get(coord.state.remote())["stage_cursors"]:
        assert time.time() < deadline, message
        time.sleep(0.5)


def _assert_stage_read_exactly(coord, job, stage: int, world: int, group: str = "", timeout_s: float = 300) -> None:
    """Every rank of one worker group reads `stage` from the coordinator: the same number of
    steps, each batch exact to the stage's mix."""
    import ray

    from yxanul_ray.stage_data import iter_worker_batches

    got = [ray.get(coord.stage_input.remote(stage, rank, 0, group), timeout=timeout_s) for rank in range(world)]
    with ThreadPoolExecutor(max_workers=world) as pool:
        reads = [pool.submit(lambda g=g: list(iter_worker_batches(g["iterator"], g["schedule"], g["source_ids"],
                                                                  world=g["world"]))) for g in got]
        per_rank = [r.result(timeout=timeout_s) for r in reads]
    st, ids = job.curriculum.stages[stage], got[0]["source_ids"]
    steps = len(got[0]["schedule"].step_rows)
    assert len(per_rank[0]) == len(per_rank[1]) == steps > 0
    for step in zip(*per_rank):  # the ranks' slices of a step, joined in rank order: the step
        sources = np.concatenate([batch["source"] for batch in step])
        real = int((sources != PAD_SOURCE).sum())  # a last step that does not divide ends in padding
        for source, w in st.mix.items():
            n = int((sources == ids[source]).sum())
            assert abs(n - w * real) < 1.0 + 1e-9
