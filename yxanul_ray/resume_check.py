"""Whether a checkpoint can go on under the job given now (pure: the driver asks before any cluster
work, for `--resume`).

A resume continues the saved run: its weights, its cursors (positions in each source's documents,
cut into pieces of at most max_doc_chars, in a file order the seed draws for every pass after the
first) and its finished stages' token counts. The settings that decide those must be what they
were, or the run would go on wrong: the weights would not load, or the data would restart at other
documents, or the token accounting would no longer add up to the target. Those are conflicts. Everything else
may change, and the changes that alter the run's course from here are named (notes): the stages
not yet begun (and with them the target, over which the LR decays), the optimizer, and the number
of workers (anywhere: the steps' rows are the same for any number). Logging, storage, failures and
the like pass silently.

A source's `path`, `hf_mirror` or `revision` may change (a corpus may move), but its files must
be the ones the run read: the cursors index its file list. A checkpoint records that list (names,
sizes and a fingerprint of each file's first and last 64 KiB, see manifest.py), and the files
found now are compared with it. A tokenizer.json may move too: the checkpoint records its content's hash.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from yxanul_ray.manifest import manifest_differences
from yxanul_ray.specs import JobSpec, stage_stride
from yxanul_ray.tokenizer import hub_tokenizer, identity_compares

if TYPE_CHECKING:  # checkpoint imports torch; this module is pure
    from yxanul_ray.checkpoint import TrainState

SOURCE_FIELDS = ("hf", "hf_config", "split", "format", "text_field", "validation_docs")
"""What decides a source's document stream (validation_docs: the held-out documents it skips)."""

SHAPE_FIELDS_FREE = ("init_std",)
"""Model shape fields the saved weights do not depend on."""


@dataclass(frozen=True)
class ResumeReview:
    conflicts: list[str]
    """Each `field: checkpoint X, now Y (why)`: the resume cannot follow the job as given."""
    notes: list[str]
    """Changes the resume follows from here on."""


def with_saved_revisions(saved: JobSpec, job: JobSpec) -> JobSpec:
    """`job` reading each Hub source, and a Hub tokenizer, at the commit the saved run read, where
    `job` names none (a config leaves the revision unset; the run pinned one when it started),
    and on the Hub it read (data.hf_endpoint), where `job` names none."""
    sources = {name: dataclasses.replace(spec, revision=saved.sources[name].revision)
               if spec.revision is None and name in saved.sources and spec.hf == saved.sources[name].hf else spec
               for name, spec in job.sources.items()}
    hub_now, hub_then = hub_tokenizer(job.data.tokenizer), hub_tokenizer(saved.data.tokenizer)
    tokenizer = job.data.tokenizer
    if hub_now and hub_then and hub_now.revision is None and hub_now.path == hub_then.path:
        tokenizer = saved.data.tokenizer
    # The run's commits are commits of the Hub it read: unset now, the resume asks that Hub again.
    endpoint = job.data.hf_endpoint or saved.data.hf_endpoint
    return dataclasses.replace(job, sources=sources, data=dataclasses.replace(job.data, tokenizer=tokenizer,
                                                                              hf_endpoint=endpoint))


def with_saved_holdouts(saved: JobSpec, job: JobSpec) -> JobSpec:
    """`job` holding out the documents the saved run held out, where `job` asks for no more: the
    run may have raised validation_docs to fill its validation rows (holdout.sized_holdouts), and a
    resume keeps its held-out set, so validation goes on measuring the same documents."""
    sources = {name: dataclasses.replace(spec, validation_docs=saved.sources[name].validation_docs)
               if name in saved.sources and 0 < spec.validation_docs <= saved.sources[name].validation_docs else spec
               for name, spec in job.sources.items()}
    return dataclasses.replace(job, sources=sources)


def review_resume(saved: JobSpec, job: JobSpec, state: TrainState,
                  files_now: dict[str, dict] | None = None, tokenizer_now: str | None = None) -> ResumeReview:
    """Compare the job that wrote the checkpoint (`saved`, its job.json) with `job`, for the
    checkpoint's `state` (its stage, steps into it, and the coordinator's cursors, file lists and
    tokenizer), the file lists found now for `job`'s sources (`files_now`, manifest.py's) and the
    identity of `job`'s tokenizer now (`tokenizer_now`, tokenizer.tokenizer_identity's)."""
    stage, step_in_stage = state.stage, state.step_in_stage
    conflicts: list[str] = []
    notes: list[str] = []

    def differ(field: str, was, now, why: str, into: list[str]) -> None:
        if was != now:
            into.append(f"{field}: checkpoint {was!r}, now {now!r} ({why})")

    weights = "the checkpoint's weights have the old shape"
    for f in dataclasses.fields(saved.model.shape):
        if f.name not in SHAPE_FIELDS_FREE:
            differ(f"model ({f.name})", getattr(saved.model.shape, f.name), getattr(job.model.shape, f.name),
                   weights, conflicts)
    stream = "the cursors are positions in the old document stream"
    tokenizer_then = state.coordinator.get("tokenizer")
    if tokenizer_then is not None and tokenizer_now is not None and identity_compares(tokenizer_then):
        # A tokenizer.json may move, as a corpus may (a job's uploaded working dir does, at every
        # submission): the ids come from its content, not its path.
        if tokenizer_then != tokenizer_now:
            conflicts.append(f"data.tokenizer: checkpoint {saved.data.tokenizer!r}, now {job.data.tokenizer!r}, "
                             f"another tokenizer ({stream})")
        elif saved.data.tokenizer != job.data.tokenizer:
            notes.append(f"data.tokenizer: checkpoint {saved.data.tokenizer!r}, now {job.data.tokenizer!r}: "
                         "the same tokenizer.json content, moved or at another commit")
    else:
        # An earlier version's checkpoint: it records no identity, or a Hub tokenizer's id, read at
        # no commit. The names must agree; the commit that run read is not known.
        name_now, hub_now = job.data.tokenizer, hub_tokenizer(job.data.tokenizer)
        hub_then = hub_tokenizer(saved.data.tokenizer)
        if hub_now and hub_then and hub_then.revision is None and hub_then.path == hub_now.path:
            name_now = hub_now.path
            if name_now != job.data.tokenizer:
                notes.append(f"data.tokenizer: the checkpoint names the Hub tokenizer {name_now!r} at no commit (an "
                             f"earlier version wrote it); the run goes on with {job.data.tokenizer!r}, taken to "
                             "give the ids that run trained on")
        differ("data.tokenizer", saved.data.tokenizer, name_now, stream, conflicts)
    differ("data.max_doc_chars", saved.data.max_doc_chars, job.data.max_doc_chars, stream, conflicts)
    if saved.data.hf_endpoint and job.data.hf_endpoint != saved.data.hf_endpoint:
        # The same commits on another Hub (a mirror of it) are the same files; the file lists,
        # compared below, say whether they are there.
        differ("data.hf_endpoint", saved.data.hf_endpoint, job.data.hf_endpoint, "the run's commits are read from "
               "there", notes)
    # The seed orders a source's files in every pass after its first (and drew the initial
    # weights, which the checkpoint replaces): it matters once a cursor is past a first pass.
    if furthest_pass(state) > 0:
        differ("run.seed", saved.run.seed, job.run.seed, "it orders the files of a source's later passes, and a "
               "cursor is in one; " + stream, conflicts)
    else:
        differ("run.seed", saved.run.seed, job.run.seed, "it orders the files of any pass after a source's first, "
               "none begun yet", notes)
    differ("sources", list(saved.sources), list(job.sources),
           "the cursors and token counts are per source, in the config's order", conflicts)
    for name in [n for n in saved.sources if n in job.sources]:
        for f in SOURCE_FIELDS:
            differ(f"sources.{name}.{f}", getattr(saved.sources[name], f), getattr(job.sources[name], f), stream,
                   conflicts)

    files_then = state.coordinator.get("files")
    if files_then is None:
        notes.append("sources: the checkpoint does not record its sources' files (an earlier version wrote it); "
                     "they are not compared, and must be the ones the run read")
    elif files_now is not None:
        for name, diff in manifest_differences(files_then, files_now).items():
            was = saved.sources[name].revision if name in saved.sources else None
            hint = f"; the run read commit {was}, set sources.{name}.revision to it" if was and job.sources[name].hf \
                else ""
            conflicts.append(f"sources.{name} (files): {diff} (the cursors index the run's file list; point the "
                             f"source at the files the run read{hint})")

    # Stages already trained, and the current one if it has begun, are fixed: their budgets make
    # the token count, and their seq_len, batch, mix and stride decide which rows were taken.
    fixed = stage + (1 if step_in_stage else 0)
    old_stages, new_stages = saved.curriculum.stages, job.curriculum.stages
    if len(new_stages) < fixed:
        done = f"finished {stage} of its {len(old_stages)} stages"
        done += f" and begun stage {fixed}" if step_in_stage else ""
        conflicts.append(f"curriculum.stages: the checkpoint's run {done}; the config has {len(new_stages)}")
    for i in range(min(fixed, len(old_stages), len(new_stages))):
        was, now = _stage_data(saved, i), _stage_data(job, i)
        for key in was:
            differ(f"curriculum.stages.{i}.{key}", was[key], now[key],
                   f"stage {i + 1} was {'trained' if i < stage else 'begun'} with it", conflicts)
    # Which rows form each step does not depend on the workers (mixing.BatchAssembler): any
    # number whose share of every batch is whole goes on with the same steps (preflight.check_plan).
    differ("run.workers", saved.run.workers, job.run.workers,
           f"the same steps, split among {job.run.workers} from step {step_in_stage + 1} of stage {stage + 1} on",
           notes)
    changed_later = [i + 1 for i in range(fixed, max(len(old_stages), len(new_stages)))
                     if i >= len(old_stages) or i >= len(new_stages) or old_stages[i] != new_stages[i]]
    if changed_later:
        notes.append(f"curriculum.stages: stage(s) {', '.join(map(str, changed_later))} differ from the checkpoint's "
                     "run; they run as the config says")
    differ("curriculum.target_tokens", saved.curriculum.target_tokens, job.curriculum.target_tokens,
           "the LR decays over the new target from here on", notes)
    for f in dataclasses.fields(saved.optimizer):
        differ(f"optimizer.{f.name}", getattr(saved.optimizer, f.name), getattr(job.optimizer, f.name),
               "from the resumed step on", notes)
    return ResumeReview(conflicts, notes)


def furthest_pass(state: TrainState) -> int:
    """The highest pass (epoch) any of the checkpoint's cursors is in: 0 while every source is in
    its first read of its files."""
    cursors = state.coordinator.get("stage_cursors", {})
    return max((c.get("epoch", 0) for by_source in cursors.values() for c in by_source.values()), default=0)


def _stage_data(job: JobSpec, i: int) -> dict:
    st = job.curriculum.stages[i]
    return {"seq_len": st.seq_len, "tokens": st.tokens, "batch": st.global_batch, "mix": dict(st.mix),
            "stride": stage_stride(job.curriculum, st)}
