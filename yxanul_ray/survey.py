"""What a source's files hold, read from their metadata before any cluster work: parquet footers
(rows, the text column's type, its null counts and size) and the first documents of a file.

The driver refuses a source that cannot give a single usable document (no rows, a text field
that is not text, every value null, nothing usable among the first documents), and one that
certainly cannot fill a stage even after every pass the run allows; it warns of one that will
repeat its documents. Reading every footer of a remote source would cost a request per file, so
remote sources are surveyed on their first files and their sizes extrapolated.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field

import pyarrow as pa

from yxanul_ray.hub import Redacted
from yxanul_ray.readers import MAX_WRAP_EPOCHS, ReadSpec, jsonl_lines, open_file, split_text

REMOTE_FILES_SURVEYED = 8
"""Footers read of a source at a URI or on the Hub (a local source's are all read)."""

SAMPLE_DOCS = 64
"""Documents read from the start of the first files that hold rows, for usable text."""

TOKENS_PER_TEXT_BYTE = 0.25
"""For the size warning only: about 4 bytes of English text per BPE token."""


@dataclass
class FileSurvey:
    path: str
    rows: int | None = None
    """None where the format does not say without reading (jsonl)."""
    text_type: str | None = None
    """The text column's Arrow type (parquet)."""
    all_null: bool = False
    """Every row's text is null, by the footer's statistics."""
    text_bytes: int | None = None
    """An upper bound of the text's bytes (parquet: the column's uncompressed size, unless
    dictionary-encoded; an uncompressed jsonl file: its size); None where there is none."""
    fields: list[str] = field(default_factory=list)
    unreadable: bool = False
    """The footer did not read: the read tasks skip and count such a file."""


@dataclass
class SourceSurvey:
    source: str
    files: int
    """Files in the listing."""
    total_bytes: int
    """Their sizes, where the listing gave them (0 otherwise)."""
    surveyed: list[FileSurvey]
    sample_path: str | None = None
    sample_docs: int = 0
    usable_docs: int = 0
    sample_kinds: list[str] = field(default_factory=list)
    """Why sampled documents were not usable (null, empty, non_string, ...), in order seen."""

    @property
    def whole(self) -> bool:
        """Every file surveyed, and each one read."""
        return len(self.surveyed) == self.files and not any(f.unreadable for f in self.surveyed)


def survey_source(spec: ReadSpec, token: Redacted) -> SourceSurvey:
    """Read `spec`'s files' metadata and a sample of its first documents (see the module)."""
    files = spec.files
    n = len(files.paths) if files.kind == "local" else min(len(files.paths), REMOTE_FILES_SURVEYED)
    surveyed = [_survey_file(spec, path, token) for path in files.paths[:n]]
    survey = SourceSurvey(files.source, len(files.paths), sum(files.sizes), surveyed)
    for f in surveyed:
        if f.unreadable or f.rows == 0 or f.all_null:
            continue
        _sample(spec, f.path, token, survey)
        if survey.sample_docs >= SAMPLE_DOCS or survey.usable_docs:
            break
    return survey


def _survey_file(spec: ReadSpec, path: str, token: Redacted) -> FileSurvey:
    out = FileSurvey(path)
    try:
        with open_file(spec.files, path, token) as f:
            if spec.files.format == "parquet":
                import pyarrow.parquet as pq

                _parquet_footer(pq.ParquetFile(f, pre_buffer=False), spec.text_field, out)
            elif not path.endswith((".gz", ".zst", ".bz2", ".lz4")):
                out.text_bytes = _size(spec, path)
    except (pa.ArrowInvalid, OSError):
        out.unreadable = True
    return out


def _size(spec: ReadSpec, path: str) -> int | None:
    files = spec.files
    return files.sizes[files.paths.index(path)] if files.sizes else None


def _parquet_footer(pf, text_field: str, out: FileSurvey) -> None:
    meta, schema = pf.metadata, pf.schema_arrow
    out.rows, out.fields = meta.num_rows, list(schema.names)
    if text_field not in schema.names:
        return
    out.text_type = str(schema.field(text_field).type)
    index = pf.schema.names.index(text_field) if text_field in pf.schema.names else None
    if index is None:  # a nested column: no per-column footer figures
        return
    nulls, size, dictionary = 0, 0, False
    for g in range(meta.num_row_groups):
        column = meta.row_group(g).column(index)
        stats = column.statistics
        nulls = nulls + stats.null_count if nulls is not None and stats is not None and stats.has_null_count \
            else None
        size += column.total_uncompressed_size
        dictionary |= any("DICTIONARY" in e for e in column.encodings)
    out.all_null = bool(out.rows) and nulls == out.rows
    out.text_bytes = None if dictionary else size


def _sample(spec: ReadSpec, path: str, token: Redacted, survey: SourceSurvey) -> None:
    """Add the first documents of `path` (up to SAMPLE_DOCS in all) to the survey's sample."""
    want = SAMPLE_DOCS - survey.sample_docs
    try:
        with open_file(spec.files, path, token) as f:
            values = _first_values(f, path, spec.text_field, spec.files.format, want)
    except (pa.ArrowInvalid, OSError):
        return
    survey.sample_path = survey.sample_path or path
    for value in values:
        pieces, kind = split_text(value, spec.max_doc_chars)
        survey.sample_docs += 1
        if pieces:
            survey.usable_docs += 1
        elif kind not in survey.sample_kinds:
            survey.sample_kinds.append(kind)


def _first_values(f, path: str, text_field: str, fmt: str, n: int) -> list:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(f, pre_buffer=False)
        if text_field not in pf.schema_arrow.names:
            return []
        for batch in pf.iter_batches(batch_size=n, columns=[text_field]):
            return batch.column(0).to_pylist()
        return []
    values = []
    try:
        for raw in itertools.islice(jsonl_lines(f, path), n):
            try:
                obj = json.loads(raw)
            except ValueError:
                values.append(None)
                continue
            values.append(obj.get(text_field) if isinstance(obj, dict) else None)
    except pa.ArrowInvalid:  # a compressed file that stops decoding: what came before
        pass
    return values


# ---- judging a survey (pure) ------------------------------------------------------------------


def source_problem(survey: SourceSurvey, text_field: str) -> str | None:
    """Why the source cannot give a single usable document, or None. Only what the survey shows
    for certain: a file that did not read leaves the question to the read tasks."""
    name, surveyed = survey.source, survey.surveyed
    fix = f"fix: sources.{name}.path (or hf) to files that hold its documents, or sources.{name}.text_field"
    for f in surveyed:
        if f.text_type is not None and not _is_text(f.text_type):
            return (f"source {name}: column {text_field!r} of {f.path} is {f.text_type}, not text; {fix} (the "
                    "column of strings)")
    if survey.whole and all(f.rows == 0 for f in surveyed if f.rows is not None) and \
            any(f.rows is not None for f in surveyed):
        return f"source {name}: its {survey.files} file(s) hold no rows ({surveyed[0].path}, ...); {fix}"
    if survey.whole and surveyed and all(f.all_null or f.rows == 0 for f in surveyed):
        return (f"source {name}: every value of column {text_field!r} is null in its files ({surveyed[0].path}, "
                f"...); {fix}")
    if survey.sample_docs and not survey.usable_docs:
        why = ", ".join(survey.sample_kinds) or "unusable"
        return (f"source {name}: none of the first {survey.sample_docs} documents of {survey.sample_path} has usable "
                f"text in {text_field!r} ({why}); {fix}")
    return None


def _is_text(arrow_type: str) -> bool:
    return arrow_type in ("string", "large_string", "string_view", "binary", "large_binary", "binary_view") or (
        arrow_type.startswith("dictionary<values=") and "string" in arrow_type.split(",")[0])


def stage_shortfall(survey: SourceSurvey, needs: list[tuple[str, int]]) -> str | None:
    """Why a stage certainly cannot be filled: it needs more tokens of the source (`needs`:
    (stage name, tokens of this source)) than every pass the run allows could give, at most one
    token per byte of text and an end-of-document token per row. None where it can, or where
    the survey gives no bound (remote sources, compressed or dictionary-encoded text)."""
    if not survey.whole or any(f.text_bytes is None for f in survey.surveyed):
        return None
    per_pass = sum(f.text_bytes for f in survey.surveyed) + sum(f.rows or 0 for f in survey.surveyed)
    most = per_pass * (MAX_WRAP_EPOCHS + 1)
    for stage, tokens in needs:
        if tokens > most:
            return (f"source {survey.source}: stage {stage!r} needs {tokens:,} of its tokens, but its files hold at "
                    f"most {per_pass:,} a pass ({sum(f.text_bytes for f in survey.surveyed):,} bytes of text), "
                    f"{most:,} in the {MAX_WRAP_EPOCHS + 1} passes a stage may take; fix: add data to "
                    f"sources.{survey.source}, or lower its mix weight in that stage")
    return None


def repeat_warning(survey: SourceSurvey, tokens_drawn: int) -> str | None:
    """A warning where the run will draw the source's documents more than once (its tokens
    estimated from the surveyed files' text sizes, scaled to the listing's sizes)."""
    known = [f for f in survey.surveyed if f.text_bytes is not None]
    if not known or tokens_drawn <= 0:
        return None
    text = sum(f.text_bytes for f in known) * survey.files / len(known)  # the rest taken alike
    estimate = int(text * TOKENS_PER_TEXT_BYTE)
    if tokens_drawn <= estimate:
        return None
    return (f"warning: source {survey.source}: about {estimate:,} tokens (estimated from its files' sizes), and the "
            f"stages draw {tokens_drawn:,}: it repeats its documents about {tokens_drawn / max(1, estimate):.1f} "
            "times, each pass in a new order")
