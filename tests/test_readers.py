"""Reading files into documents, without Ray: real parquet and jsonl files (plain, compressed, cut
short), held-out documents, the text field's check, and how many reads a stage plans."""

from __future__ import annotations

import dataclasses
import json
import os
import time
import zlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.fake_hub import hub_offline_mode
from tests.pipeline_helpers import TOK, as_raw, one_source_job, order_of, write_docs
from yxanul_ray.config import job_from_dict, load_job
from yxanul_ray.cursors import SourceCursor
from yxanul_ray.hub import SourceUnavailable, resolve_files
from yxanul_ray.local_data import holdout_rows
from yxanul_ray.specs import ConfigError
from yxanul_ray.stage_data import read_spec


def test_a_corrupt_last_file_is_named_where_validation_reads_it(tmp_path):
    """Training skips a corrupt shard; validation cannot, as its documents are the last file's:
    the error names the source, the file and the fix (a traceback from pyarrow did not)."""
    write_docs(str(tmp_path / "a" / "part-0.parquet"), ["one document", "another"])
    (tmp_path / "a" / "part-1.parquet").write_bytes(b"PAR1 cut short")
    job = one_source_job(str(tmp_path / "a" / "*.parquet"), holdout=2)
    files = {"a": resolve_files(job.sources["a"])}
    with pytest.raises(ValueError, match=r"source a: its held-out validation documents are the last 2 of its last "
                                         r"file, .*part-1\.parquet, which cannot be read as parquet \(.*\); fix: "
                                         r"replace that file, or set sources\.a\.validation_docs to 0"):
        holdout_rows(job, files, TOK.eos_id, 16, 8)


def test_jsonl_holdout_is_exactly_the_rows_training_skips(tmp_path):
    """A blank line among a jsonl file's last rows (a file ending in two newlines, say): training
    counts it as a row, so the held-out documents must too. Before, validation skipped blank
    lines and so took one document more from the rows training read."""
    from yxanul_ray.hub import Redacted
    from yxanul_ray.readers import read_file_docs, read_holdout_docs

    texts = [f"jsonl document {i}" for i in range(6)]
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "part-0.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts) + "\n")
    job = one_source_job(str(tmp_path / "j" / "*.jsonl"), fmt="jsonl", holdout=2)
    spec = read_spec(job, resolve_files(job.sources["a"]))
    trained = [t for table in read_file_docs(spec, Redacted(None), 0, 0, 0, None, False)
               for t in table.column("text").to_pylist() if t]
    held_out = read_holdout_docs(spec)
    assert trained == texts[:5] and held_out == texts[5:]


def test_jsonl_rows_are_streamed_with_the_same_row_numbers(tmp_path):
    """The jsonl reader streams a file line by line (a shard can be gigabytes; it was read whole,
    1.6 GiB peak RSS for an 815 MB file). Rows keep their numbers, so cursors from before still
    point at the same documents: blank lines count, text after the last newline counts unless
    blank, and a resume inside the file with a holdout at its end reads just the rows between."""
    from yxanul_ray.hub import Redacted
    from yxanul_ray.readers import read_file_docs

    doc = [json.dumps({"text": f"row {i}"}) for i in range(8)]
    body = "\n".join([doc[0], "", doc[2], doc[3], "{broken", doc[5], doc[6], doc[7]])
    for tail, last_row in (("", 7), ("\n", 7), ("\n  ", 7), ("\n" + json.dumps({"text": "row 8"}), 8)):
        path = tmp_path / f"tail{len(tail)}" / "part-0.jsonl"
        path.parent.mkdir()
        path.write_text(body + tail)
        job = one_source_job(str(path), fmt="jsonl", holdout=2)
        spec = read_spec(job, resolve_files(job.sources["a"]))
        tables = list(read_file_docs(spec, Redacted(None), 0, 0, 0, SourceCursor(row=2), False))
        rows = [(r, t, bad) for table in tables for r, t, bad in zip(*(table.column(c).to_pylist()
                                                                        for c in ("row", "text", "bad")))]
        kept = last_row - 1  # the last two rows are held out
        expected = {2: "row 2", 3: "row 3", 4: None, 5: "row 5", 6: "row 6", 7: "row 7"}
        assert [r for r, _, _ in rows] == list(range(2, kept)), tail
        assert [(t if not bad else None) for _, t, bad in rows] == [expected[r] for r in range(2, kept)]
        assert rows[2][2] == "malformed_json"


def test_compressed_jsonl_reads_as_plain_and_a_cut_one_is_skipped_from_where_it_stops(tmp_path):
    """`.jsonl.gz`, `.jsonl.zst` (and .bz2, .lz4) read as their plain jsonl would, held-out
    documents included. A local one cut short keeps the rows before the cut and counts the rest
    as one unreadable_file row, as a corrupt parquet file does."""
    import gzip

    from yxanul_ray.hub import Redacted
    from yxanul_ray.readers import read_file_docs, read_holdout_docs

    texts = [f"compressed document {i} " * 20 for i in range(6000)]  # 2.8 MB: more than one 1 MiB read
    body = "".join(json.dumps({"text": t}) + "\n" for t in texts).encode()
    (tmp_path / "gz").mkdir()
    (tmp_path / "gz" / "part-0.jsonl.gz").write_bytes(gzip.compress(body))
    (tmp_path / "zst").mkdir()
    with pa.CompressedOutputStream(str(tmp_path / "zst" / "part-0.jsonl.zst"), "zstd") as z:
        z.write(body)
    (tmp_path / "cut").mkdir()
    whole = gzip.compress(body)
    (tmp_path / "cut" / "part-0.jsonl.gz").write_bytes(whole[:len(whole) * 4 // 5])

    def read(folder: str):
        job = one_source_job(str(tmp_path / folder / "*.jsonl.*"), fmt="jsonl", holdout=3)
        spec = read_spec(job, resolve_files(job.sources["a"]))
        tables = list(read_file_docs(spec, Redacted(None), 0, 0, 0, SourceCursor(row=1), False))
        cols = {c: [v for t in tables for v in t.column(c).to_pylist()] for c in ("row", "text", "bad")}
        return spec, cols

    for folder in ("gz", "zst"):
        spec, cols = read(folder)
        assert cols["text"] == texts[1:-3] and cols["row"] == list(range(1, len(texts) - 3)) and not any(cols["bad"])
        assert read_holdout_docs(spec) == texts[-3:]
    spec, cols = read("cut")
    kept = cols["bad"].index("unreadable_file")
    assert 1 < kept < len(texts) - 3 and cols["bad"][kept + 1:] == []
    # Only the read that fails is lost: at most 64 KiB of what gzip itself decodes before the cut.
    decodable = zlib.decompressobj(wbits=31).decompress(whole[:len(whole) * 4 // 5]).count(b"\n")
    assert decodable - (kept + 1) <= (64 << 10) // len(json.dumps({"text": texts[0]})) + 1, (decodable, kept)
    assert cols["text"][:kept] == texts[1:kept + 1] and cols["row"][kept] == kept + 1
    with pytest.raises(ValueError, match=r"source a: its held-out validation documents are the last 3 of its last "
                                         r"file, .*part-0\.jsonl\.gz, which cannot be decompressed"):
        read_holdout_docs(spec)


def test_a_batch_of_long_documents_is_tokenized_a_slice_at_a_time_to_the_same_ids(tmp_path):
    """The tokenizer's ids come back as Python lists, so a batch is encoded in slices of about
    TOKENIZE_SLICE_CHARS characters (256 documents of 400k characters peaked at 2.4 GiB RSS in
    one call): the table is the same for any slice size, bad rows' empty text included."""
    from yxanul_ray.readers import DOC_SCHEMA
    from yxanul_ray.tokenizer import tokenize_batch

    texts = [f"document {i} " * (i * 7 % 40) for i in range(30)]
    n = len(texts)
    batch = pa.table({"epoch": pa.array([0] * n, pa.int32()), "file_pos": pa.array([0] * n, pa.int32()),
                      "row": pa.array(range(n), pa.int64()), "piece": pa.array([0] * n, pa.int32()),
                      "last_piece": pa.array([True] * n), "bad": pa.array(["" if t else "empty" for t in texts]),
                      "text": pa.array(texts, pa.large_string())}, schema=DOC_SCHEMA)
    whole = tokenize_batch(batch, "gpt2")
    assert whole.column("tokens").to_pylist() == [list(ids) for ids in TOK.encode_batch(texts)]
    for slice_chars in (1, 50, 333):
        assert tokenize_batch(batch, "gpt2", slice_chars=slice_chars).equals(whole)


def test_a_large_row_group_is_read_in_batches_with_the_same_row_numbers(tmp_path):
    """A row group of more rows than one decoded batch (pandas writes a whole file as one): rows
    keep their numbers across batches, from a cursor inside it to the holdout at its end."""
    from yxanul_ray.hub import Redacted
    from yxanul_ray.readers import PARQUET_BATCH_ROWS, read_file_docs, read_holdout_docs

    n = 3 * PARQUET_BATCH_ROWS + 5
    texts = [f"row {i}" for i in range(n)]
    write_docs(str(tmp_path / "a" / "part-0.parquet"), texts, row_group_size=n)
    job = one_source_job(str(tmp_path / "a" / "*.parquet"), holdout=10)
    spec = read_spec(job, resolve_files(job.sources["a"]))
    start = PARQUET_BATCH_ROWS + 7
    tables = list(read_file_docs(spec, Redacted(None), 0, 0, 0, SourceCursor(row=start), False))
    rows = [r for table in tables for r in table.column("row").to_pylist()]
    read = [t for table in tables for t in table.column("text").to_pylist()]
    assert rows == list(range(start, n - 10)) and read == texts[start:n - 10]
    assert read_holdout_docs(spec) == texts[n - 10:]


def test_a_read_task_carries_its_own_file_not_the_source_list(tmp_path):
    """Ray Data puts every planned read task in the object store when a stage starts; each held
    the whole file list, so 2,410 files made 315 KiB tasks, 2.2 GiB a source and stage."""
    from ray import cloudpickle

    from yxanul_ray.read_plan import one_file
    from yxanul_ray.sources import make_datasource

    texts = [f"doc {i}" for i in range(6)]
    for i in range(3):
        write_docs(str(tmp_path / "a" / f"part-{i}.parquet"), texts[2 * i:2 * i + 2])
    job = one_source_job(str(tmp_path / "a" / "*.parquet"), holdout=1)
    spec = read_spec(job, resolve_files(job.sources["a"]))
    assert [one_file(spec, i).holdout_docs for i in range(3)] == [0, 0, 1]
    assert [one_file(spec, i).files.paths for i in range(3)] == [(p,) for p in spec.files.paths]
    tasks = make_datasource(spec, SourceCursor(), 3).get_read_tasks(1)
    read = [t for task in tasks for table in task()
            for t, bad in zip(table.column("text").to_pylist(), table.column("bad").to_pylist()) if not bad]
    # In the epoch's file order, less the held-out document: the last of the last file.
    assert read == [t for f in order_of(spec) for t in texts[2 * f:2 * f + 2] if t != "doc 5"]
    many = dataclasses.replace(spec, files=dataclasses.replace(
        spec.files, paths=spec.files.paths * 1000, sizes=spec.files.sizes * 1000))
    task = make_datasource(many, SourceCursor(), 1).get_read_tasks(1)[0]
    assert len(cloudpickle.dumps(task)) < 8 * 1024


def test_a_stage_plans_reads_for_its_tokens_not_whole_passes():
    """Read tasks are planned as far as the stage's tokens could need at 0.01 tokens per byte
    (the cursor's own file counted as nothing), not whole passes over the source: every planned
    task is put in Ray's object store when the stage starts (7,230 for 2,410 files: 5.6-7.6 s to a
    first block, against 0.7-1.6 s for 30). Capped at MAX_WRAP_EPOCHS passes more."""
    from yxanul_ray.hub import SourceFiles
    from yxanul_ray.read_plan import planned_reads, stream_files
    from yxanul_ray.readers import MAX_WRAP_EPOCHS, ReadSpec

    def spec_of(sizes):
        files = SourceFiles("a", "local", tuple(f"/d/{i}.parquet" for i in range(len(sizes))), "parquet",
                            sizes=tuple(sizes))
        return ReadSpec(files=files, text_field="text", max_doc_chars=100, holdout_docs=0, seed=1)

    big = spec_of([2_000_000_000] * 2410)
    assert planned_reads(big, SourceCursor(), 550_000_000) == 1 + 28  # 55 GB at 0.01 tokens per byte
    mid = SourceCursor(epoch=0, file_pos=2409, row=5)
    assert [(e, p) for e, p, _ in stream_files(big, mid, 3)] == [(0, 2409), (1, 0), (1, 1)]
    assert planned_reads(big, mid, 550_000_000) == 29
    small = spec_of([100, 300, 200])
    assert planned_reads(small, SourceCursor(), 4) == 1 + 2  # 400 bytes: files 1 and 2
    assert planned_reads(small, SourceCursor(), 10**9) == 3 * (MAX_WRAP_EPOCHS + 1)
    unsized = dataclasses.replace(small, files=dataclasses.replace(small.files, sizes=()))
    assert planned_reads(unsized, SourceCursor(file_pos=1), 4) == 3 * (MAX_WRAP_EPOCHS + 1) - 1  # every pass


def test_parquet_holdout_reads_only_the_row_groups_that_hold_it(tmp_path):
    """The held-out documents are the last file's last rows: only their row groups are read (a
    Hub shard's text column can be gigabytes). Shown by a file whose first row group is corrupt,
    which a read of the whole column fails on."""
    from yxanul_ray.readers import read_holdout_docs

    texts = [f"parquet document {i}" for i in range(20)]
    path = str(tmp_path / "a" / "part-0.parquet")
    write_docs(path, texts, row_group_size=4)
    chunk = pq.ParquetFile(path).metadata.row_group(0).column(0)
    chunk_end = (chunk.dictionary_page_offset or chunk.data_page_offset) + chunk.total_compressed_size
    with open(path, "r+b") as f:  # the first row group's data page, past its header
        f.seek(chunk.data_page_offset + 16)
        f.write(b"\xa5" * (chunk_end - chunk.data_page_offset - 20))
    job = one_source_job(str(tmp_path / "a" / "*.parquet"), holdout=6)  # spans row groups 3 and 4
    assert read_holdout_docs(read_spec(job, resolve_files(job.sources["a"]))) == texts[14:]


def test_hub_source_offline_fails_fast_with_message(monkeypatch):
    job = load_job(os.path.join(os.path.dirname(__file__), "..", "configs",
                                "yxanul_270m_progressive_curriculum.yaml"))
    hub_offline_mode(monkeypatch)
    t = time.time()
    with pytest.raises(SourceUnavailable) as err:
        resolve_files(job.sources["fineweb"])
    assert time.time() - t < 5
    assert "source fineweb" in str(err.value) and "HF_HUB_OFFLINE" in str(err.value)


def test_hub_source_unreachable_fails_fast_with_message(monkeypatch):
    job = load_job(os.path.join(os.path.dirname(__file__), "..", "configs",
                                "yxanul_270m_progressive_curriculum.yaml"))
    hub_offline_mode(monkeypatch, on=False)
    # A closed local port stands in for an unreachable Hub, whatever network the machine has.
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "http://127.0.0.1:9")
    t = time.time()
    with pytest.raises(SourceUnavailable) as err:
        resolve_files(job.sources["math"])
    assert time.time() - t < 5
    assert "source math" in str(err.value) and "unreachable" in str(err.value)
    assert "Yxanul/cc-math-finest" in str(err.value)


def test_a_text_field_the_first_file_lacks_is_refused_before_any_cluster_work(tmp_path):
    """Before, the read tasks raised it once the cluster and the first stages had started (the
    demo: exit 1 after 38 s and 1,774 log lines). Now the driver reads each source's first file
    (a parquet footer; a jsonl file's first documents, past malformed rows) and refuses the
    config, naming the source, the file and its fields. Locally, at a URI, as jsonl and
    compressed jsonl, and on the Hub's code path (a mirror); a right field passes, and a first
    file that does not read is left to the read tasks, which count and skip it."""
    import gzip

    from yxanul_ray.manifest import list_sources
    from yxanul_ray.preflight import check_sources

    def refusal(path: str, fmt: str = "parquet", text_field: str = "content") -> str | None:
        job = job_from_dict({**as_raw(one_source_job(path, fmt=fmt)), "sources": {
            "a": {"path": path, "format": fmt, "text_field": text_field, "validation_docs": 0}}}, "<test>")
        try:
            check_sources(job, list_sources(job))
        except ConfigError as e:
            return str(e)
        return None

    write_docs(str(tmp_path / "p" / "part-0.parquet"), ["some text"])
    said = f"'content' is not among the columns in {tmp_path}/p/part-0.parquet (text); fix: sources.a.text_field"
    assert refusal(str(tmp_path / "p" / "*.parquet")) == f"<test>: sources.a.text_field: {said}, the field that " \
                                                          "holds each document's text"
    assert said in refusal(f"file://{tmp_path}/p/*.parquet")  # the file as its filesystem names it
    assert refusal(str(tmp_path / "p" / "*.parquet"), text_field="text") is None
    rows = b"{not json\n" + b"".join(json.dumps({"id": i, "text": f"doc {i}"}).encode() + b"\n" for i in range(3))
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "part-0.jsonl").write_bytes(rows)
    (tmp_path / "j" / "part-1.jsonl.gz").write_bytes(gzip.compress(rows))
    for name in ("part-0.jsonl", "part-1.jsonl.gz"):
        assert (f"'content' is not among the keys of its first 3 documents in {tmp_path}/j/{name} (id, text)"
                in refusal(str(tmp_path / "j" / name), "jsonl"))
        assert refusal(str(tmp_path / "j" / name), "jsonl", "text") is None
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "part-0.parquet").write_bytes(b"PAR1")
    write_docs(str(tmp_path / "bad" / "part-1.parquet"), ["some text"])
    assert refusal(str(tmp_path / "bad" / "*.parquet"), text_field="text") is None
    repo = tmp_path / "datasets" / "org" / "corpus"
    write_docs(str(repo / "data" / "train-00000-of-00001.parquet"), ["mirrored"])
    job = job_from_dict({**as_raw(one_source_job(str(tmp_path / "p" / "*.parquet"))), "sources": {
        "a": {"hf": "org/corpus", "hf_mirror": str(tmp_path), "text_field": "content", "validation_docs": 0}}},
        "<test>")
    with pytest.raises(ConfigError, match=r"^<test>: sources\.a\.text_field: 'content' is not among the columns in "
                                          r".*train-00000-of-00001\.parquet \(text\)"):
        check_sources(job, list_sources(job))


def test_files_named_as_the_other_format_are_refused_when_listed(tmp_path):
    """A jsonl glob left at the default format (parquet): before, each file was skipped as an
    unreadable parquet file inside Ray and the stage ended in "ran out"; now the listing, which
    the driver does before any cluster work, names the setting. Locally and at a URI."""
    (tmp_path / "j").mkdir()
    for i in range(2):
        (tmp_path / "j" / f"part-{i}.jsonl").write_text(json.dumps({"text": "a document"}) + "\n")
    for path in (str(tmp_path / "j" / "*.jsonl"), f"file://{tmp_path}/j/*.jsonl"):
        job = one_source_job(path)
        with pytest.raises(SourceUnavailable, match=r"source a: path '.*\*\.jsonl' matches 2 jsonl file\(s\), read "
                                                    r"as parquet; fix: sources\.a\.format: jsonl"):
            resolve_files(job.sources["a"])
    write_docs(str(tmp_path / "j" / "part-2.parquet"), ["a document"])  # a mixed folder is the user's to mean
    assert len(resolve_files(one_source_job(str(tmp_path / "j" / "*")).sources["a"]).paths) == 3
    with pytest.raises(SourceUnavailable, match=r"matches 1 parquet file\(s\), read as jsonl; fix: sources\.a\."
                                                r"format: parquet"):
        resolve_files(one_source_job(str(tmp_path / "j" / "*.parquet"), fmt="jsonl").sources["a"])


def test_config_rejects_missing_local_files(tmp_path):
    with pytest.raises(ConfigError, match="sources.a.path"):
        one_source_job(str(tmp_path / "none" / "*.parquet"))


def test_cursor_round_trip():
    c = SourceCursor(1, 2, 3, 0, 9)
    assert SourceCursor.from_dict(c.to_dict()) == c
