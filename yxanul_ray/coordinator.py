"""The curriculum coordinator: one named actor per job, the single owner of curriculum state.

It builds each stage's data (stage_data.build_stage_data) from the cursors where the previous
stage stopped, splits the stage's Dataset of batches across the train workers (one
streaming_split per stage; the source pipelines run on threads here), and builds stage k+1 as
soon as stage k's packers have produced their last rows (before the workers have consumed
them), so the switch has no cold start. Workers ask it for their iterator once per stage and
send it progress fire-and-forget; it never sits on the step path. Stage switches themselves are
arithmetic on the workers, not decided here.

Ray restarts it if its process dies (up to `run.max_failures` times; the driver sets that).
Everything it held is gone then: the stage builds, the packing actor and the splits' actors
(Ray ends the actors a process owns), and its cursors. Each start of a worker group therefore
`join`s it first, handing it the curriculum state of the checkpoint the group restored, and gets
its incarnation, which the group passes with every later call. A restarted coordinator refuses
the older group's calls, so that group fails at once, instead of training on without
checkpointable state, and Ray Train restarts it from its last checkpoint, whose cursors the new
group hands over. A checkpoint always holds the cursors of the stage it is in (`state(stage)`),
so that is enough. Without the restart, one crash of this process ended the run whatever
`max_failures` said: it happened once in CI, inside Ray's core, while Ray Data cancelled the read
tasks of a source that had produced its rows.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray

from yxanul_ray.config import validated_job
from yxanul_ray.cursors import SourceCursor, SourceStats
from yxanul_ray.errors import CannotContinue
from yxanul_ray.hub import Redacted
from yxanul_ray.local_data import holdout_rows
from yxanul_ray.manifest import SourceListing, list_sources, manifest_differences
from yxanul_ray.raycluster import actor_was_restarted, head_node_strategy
from yxanul_ray.stage_data import StageData, build_stage_data, source_ids
from yxanul_ray.stage_packers import StagePackers
from yxanul_ray.tokenizer import identity_compares, load_tokenizer, run_tokenizer

log = logging.getLogger(__name__)


@dataclass
class _Build:
    data: StageData
    splits: list[dict[str, Any]]
    world: int
    """The ranks it is split among."""
    handed: set[int] = field(default_factory=set)
    group: str | None = None
    """The worker group it was handed to (None until the first rank asks)."""

    def open_to(self, group: str, world: int) -> bool:
        return self.group in (None, group) and self.world == world


@ray.remote(num_cpus=0, max_concurrency=64)
class CurriculumCoordinator:
    def __init__(self, job: dict, world_size: int, listing: SourceListing | None = None,
                 hub_token: Redacted | None = None, run_name: str = ""):
        self._ended: str | None = None
        from yxanul_ray.raycluster import quiet_ray_data

        quiet_ray_data()
        # Ray warns of a blocking ray.get in an async actor whatever thread makes it. Here they
        # are all on threads (the source pipelines' drive_source, Ray Data's executors), none on
        # the event loop: ray.get wrapped in this actor over a four-stage demo run caught none
        # there. Ray Train turns the same warning off in its own controller.
        os.environ["RAY_WARN_BLOCKING_GET_INSIDE_ASYNC"] = "0"
        self.job = validated_job(job)
        if hub_token is not None and hub_token.value:
            # The driver's HF_TOKEN, which it pinned and listed the Hub sources with. This process
            # has the cluster's environment, which need not hold one (a `ray start` in another
            # shell, a node without the secret), and it is the one that reads the Hub for the run:
            # a restart's listing, the tokenizer, the held-out documents, and the token its read
            # tasks carry (sources.make_datasource). Never logged: Redacted prints no value.
            os.environ["HF_TOKEN"] = hub_token.value
        self.world = world_size
        restarted = actor_was_restarted()
        if listing is None or restarted:
            # Restarted, this actor lists the sources again: files changed since the driver listed
            # them are what `join` must find, before a checkpoint's cursors index the wrong ones.
            listing = list_sources(self.job)
        self.files = listing.files
        # Checkpointed with the cursors, which index these lists (see manifest.py).
        self.manifests = listing.manifests
        # Read once for the whole run (a restart reads it again, and `join` compares): every
        # stage's tokenize tasks get this content, not the path or Hub id. Its identity is
        # checkpointed too: a resume compares it with the tokenizer it is given (resume_check).
        self.tokenizer_for_tasks, self.tokenizer = run_tokenizer(self.job.data.tokenizer, self.job.data.hf_endpoint)
        self.eos_id = load_tokenizer(self.tokenizer_for_tasks).eos_id
        # Named after its coordinator where that has a name, so an operator (or a test) can find
        # the run's packing actor.
        name = ray.get_runtime_context().get_actor_name()
        self.packers = _start_packers(f"{name}-packers" if name else None)
        self.source_ids = source_ids(self.job)
        # Cursors at the start of each stage (stage 0: the start of every source). A resumed run's
        # (`--resume`) and a restarted actor's later stages come from the workers' checkpoint,
        # handed over by `join` before any stage is asked for.
        self.stage_cursors: dict[int, dict[str, dict]] = {0: {}}
        self.stage_stats: dict[int, dict[str, dict]] = {}
        self._cursor_events: dict[int, asyncio.Event] = {}
        self._builds: dict[tuple[int, int], asyncio.Future] = {}
        self._stage_data: dict[int, StageData] = {}
        self._progress: dict = {}
        self._validation: dict[tuple[int, int], asyncio.Future] = {}
        self._metrics = _Gauges(run_name or self.job.run.name)
        self._start_on_build = 0  # stages below this start their pipelines when built (prepare)
        self.incarnation = uuid.uuid4().hex
        if restarted:
            log.warning("the curriculum coordinator was restarted after its process died: the train workers "
                        "restart from their last checkpoint and hand it the stage cursors saved there")

    # ---- stage data --------------------------------------------------------------------------

    def join(self, saved: dict) -> str:
        """A worker group's first call at each of its starts: takes the curriculum state of the
        checkpoint it restored (`state`; {} on a fresh run) where this actor lacks it, and returns
        the incarnation the group passes with its later calls. After Ray restarted this actor only
        that checkpoint knows where each stage started. What this actor already knows is kept:
        the two agree, both being records of the same streams. A checkpoint whose sources' files
        are not the ones listed here (changed since: this actor, restarted, listed them again), or
        whose tokenizer is not the one loaded here (a tokenizer.json rewritten meanwhile), is
        refused: its cursors would point at other documents, or other tokens. The run ends then,
        without Ray Train's restarts: each would restore that checkpoint and be refused again
        (train_loop_per_worker returns the refusal, and the driver prints it)."""
        if self._ended:
            raise CannotContinue(self._ended)
        changed = [f"{s}: {d}" for s, d in manifest_differences(saved.get("files", {}), self.manifests).items()]
        tokenizer_then = saved.get("tokenizer", self.tokenizer)
        if identity_compares(tokenizer_then) and tokenizer_then != self.tokenizer:  # see resume_check for the rest
            changed.append(f"data.tokenizer {self.job.data.tokenizer!r}: not the content the run tokenized with")
        if changed:
            raise SourceFilesChanged("the sources' files or tokenizer differ from those of the checkpoint the workers "
                                     "restored, whose cursors index them: " + "; ".join(changed) + ". Put the run's "
                                     "files back, then resume from that checkpoint (--resume)")
        for k, cursors in saved.get("stage_cursors", {}).items():
            if int(k) not in self.stage_cursors:
                self.stage_cursors[int(k)] = cursors
                self._cursor_event(int(k)).set()
        for k, stats in saved.get("stage_stats", {}).items():
            self.stage_stats.setdefault(int(k), stats)
        return self.incarnation

    def end_run(self, message: str) -> None:
        """Record a failure no restart can fix, met where a worker cannot end the run itself (a
        checkpoint that could not be written, on Ray Train's upload thread): the worker group Ray
        Train starts next is refused at `join`, and the run ends with `message`."""
        self._ended = message

    def _check(self, incarnation: str | None) -> None:
        """Refuse a worker group that joined an earlier incarnation of this actor (None: a caller
        outside any worker group, such as a test)."""
        if incarnation is not None and incarnation != self.incarnation:
            raise CoordinatorRestarted("the curriculum coordinator was restarted and has lost this worker group's "
                                       "stage data; the group restarts from its last checkpoint")

    async def stage_input(self, stage: int, rank: int, start_step: int = 0, group: str = "",
                          incarnation: str | None = None, world: int | None = None) -> dict:
        """This rank's DataIterator over `stage`'s batches from `start_step`, plus what it needs
        to take them. `group` names the worker group (one id per start of the group, shared by
        its ranks) and `world` its size: every rank of a group gets the same build, and a
        restarted group a fresh one (Ray Data iterators cannot be rewound), split among as many
        ranks as it has (an elastic group may restart on another count; later stages are built
        ahead for that count). A build the StagePackers actor lost in a restart is never handed
        out: it is built again."""
        self._check(incarnation)
        world = self.world = world or self.world
        key = (stage, start_step)
        while True:
            fut = self._builds.get(key)
            if fut is None or (fut.done() and not fut.result().open_to(group, world)):
                fut = self._builds[key] = asyncio.ensure_future(self._build(stage, start_step, world))
            build = await fut
            if build.group is None and not await self.packers.holds.remote(build.data.stage_key):
                if self._builds.get(key) is fut:  # not replaced by another rank meanwhile
                    log.warning("stage %d's build was lost with a restart of the StagePackers actor; building it "
                                "again", stage + 1)
                    del self._builds[key]
                continue
            if build.open_to(group, world):  # not claimed by another group while `holds` was asked
                break
        build.group = group
        build.handed.add(rank)
        build.data.start()  # its sources' pipelines run from the first rank's request on
        iterator = build.splits[rank]
        if len(build.handed) == build.world:
            # Every rank holds its iterator now. Kept here too, they would keep the split's
            # coordinator actor (a process) alive to the end of the run: one idle process per
            # stage. Released, it ends with the workers' last use of its stage.
            build.splits = []
        d = build.data
        return {"iterator": iterator, "schedule": d.schedule, "source_ids": self.source_ids,
                "start_step": start_step, "world": build.world}

    def prepare(self, stages: int) -> None:
        """Build the first `stages` stages now and start their pipelines as each is built, before
        any worker asks. The driver calls this on a fresh run while Ray Train starts its workers,
        so the first stages' data is past its cold start when training begins (short first
        stages last fewer seconds than a cold pipeline takes). The same builds are then handed to
        the workers; stages after these start as before, at the first worker's request (two
        stages ahead of training)."""
        self._start_on_build = stages
        if (0, 0) not in self._builds:
            self._builds[(0, 0)] = asyncio.ensure_future(self._build(0, 0, self.world))

    async def _build(self, stage: int, start_step: int, world: int) -> _Build:
        cursors = await self._cursors_at(stage)
        data = build_stage_data(self.job, stage, {s: SourceCursor.from_dict(c) for s, c in cursors.items()},
                                world, self.files, self.eos_id, self.packers, start_step=start_step,
                                tokenizer=self.tokenizer_for_tasks)
        # A stage is built again only for a restarted worker group: the earlier build's source
        # pipelines would otherwise wait forever, holding their tasks' worker processes.
        earlier = self._stage_data.get(stage)
        if earlier is not None:
            earlier.cancel(f"stage {stage + 1} was built again (the workers restarted)")
        self._stage_data[stage] = data
        # Registered before anything of it runs, so a restart of the packing actor is seen
        # (stage_input asks `holds`) instead of leaving reads waiting for rows that are gone.
        await self.packers.begin.remote(data.stage_key)
        build = _Build(data, data.split(world), world)
        if start_step == 0 and stage < self._start_on_build:
            data.start()
        asyncio.ensure_future(self._after_stage_produced(stage, data))
        log.info("built stage %d from step %d", stage + 1, start_step)
        return build

    async def _cursors_at(self, stage: int) -> dict[str, dict]:
        if stage not in self.stage_cursors:
            await self._cursor_event(stage).wait()
        return self.stage_cursors[stage]

    def _cursor_event(self, stage: int) -> asyncio.Event:
        return self._cursor_events.setdefault(stage, asyncio.Event())

    async def _after_stage_produced(self, stage: int, data: StageData) -> None:
        """When a stage's rows are all produced: record where each source stopped, then build the
        next stage ahead of time."""
        try:
            end = await data.end_state
        except Exception as e:  # noqa: BLE001 - a failed pipeline is reported to the workers, not here
            log.warning("stage %d data failed: %s", stage + 1, e)
            return
        # A build from mid-stage re-makes the skipped rows, so its stats are the whole stage's:
        # they count where the first build's were lost (a resume, a restart of this actor).
        if data.start_step == 0 or stage not in self.stage_stats:
            self.stage_stats[stage] = {s: v["stats"] for s, v in end.items()}
        nxt = stage + 1
        if nxt not in self.stage_cursors:
            cursors = dict(self.stage_cursors[stage])
            cursors.update({s: v["cursor"] for s, v in end.items()})
            self.stage_cursors[nxt] = cursors
            self._cursor_event(nxt).set()
        if nxt < len(self.job.curriculum.stages) and (nxt, 0) not in self._builds:
            self._builds[(nxt, 0)] = asyncio.ensure_future(self._build(nxt, 0, self.world))

    # ---- state, validation, progress ----------------------------------------------------------

    async def state(self, stage: int | None = None, incarnation: str | None = None) -> dict:
        """What a checkpoint must hold to rebuild any stage exactly (JSON-able). With `stage`
        (the checkpoint's), once that stage's start cursors are known: at a boundary the workers
        can finish a stage's rows a moment before its sources report where they stopped, and a
        checkpoint without its own stage's cursors could not be continued by a restarted
        coordinator."""
        self._check(incarnation)
        if stage is not None and stage not in self.stage_cursors:
            try:
                await asyncio.wait_for(self._cursor_event(stage).wait(), CURSOR_WAIT_S)
            except asyncio.TimeoutError:
                raise RuntimeError(f"stage {stage + 1}'s start cursors were not known {CURSOR_WAIT_S} s after the "
                                   "workers reached it; no checkpoint is written without them") from None
        return {"stage_cursors": {str(k): v for k, v in self.stage_cursors.items()},
                "stage_stats": {str(k): v for k, v in self.stage_stats.items()},
                "files": self.manifests, "tokenizer": self.tokenizer}

    async def stage_report(self, stage: int) -> dict[str, dict]:
        """Per-source stats of a stage (rows, distinct tokens, documents, bad rows, wraps)."""
        await self._cursors_at(stage + 1)
        return self.stage_stats.get(stage, {})

    async def validation_rows(self, seq_len: int, max_rows: int) -> dict[str, np.ndarray]:
        """Held-out rows per source, packed at one fixed seq_len so losses compare across stages.
        On a thread: reading and tokenizing would otherwise hold the actor's event loop, and with
        it the stage builds the workers are waiting for."""
        key = (seq_len, max_rows)
        if key not in self._validation:  # once, for every rank: they must evaluate the same rows
            self._validation[key] = asyncio.ensure_future(asyncio.to_thread(
                holdout_rows, self.job, self.files, self.eos_id, seq_len, max_rows, self.tokenizer_for_tasks))
        return await self._validation[key]

    def record_progress(self, progress: dict) -> None:
        """Fire-and-forget from rank 0 at each log interval; feeds the dashboard gauges."""
        self._progress = progress
        self._metrics.update(progress)

    def progress(self) -> dict:
        return self._progress

    def total_stats(self, incarnation: str | None = None) -> dict[str, dict]:
        self._check(incarnation)
        total: dict[str, SourceStats] = {}
        for per_source in self.stage_stats.values():
            for s, st in per_source.items():
                total[s] = total.get(s, SourceStats()).add(SourceStats.from_dict(st))
        return {s: st.to_dict() for s, st in total.items()}


CURSOR_WAIT_S = 120
"""How long a checkpoint waits for its stage's start cursors (normally there, or milliseconds away)."""


PACKERS_NAME_WAIT_S = 60
"""How long a restarted coordinator waits for its dead packing actor's name to be freed."""


class CoordinatorRestarted(RuntimeError):
    """A worker group's call reached a coordinator Ray restarted after the group joined it."""


class SourceFilesChanged(RuntimeError):
    """A source's files (or the tokenizer) are no longer those a checkpoint's cursors index."""


def _start_packers(name: str | None):
    """The run's StagePackers actor, named `name`. A restarted coordinator's old one dies with
    the old process (Ray ends the actors a process owns). Its death and this restart are separate
    events in Ray's control store, so should its name still be held, wait for it rather than fail
    the restart (in the tests it was always free already)."""
    deadline = time.monotonic() + PACKERS_NAME_WAIT_S
    while True:
        try:
            return StagePackers.options(**({"name": name} if name else {}),
                                        scheduling_strategy=head_node_strategy(ray)).remote()
        except ray.exceptions.ActorAlreadyExistsError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


class _Gauges:
    """Custom metrics in the Ray dashboard (Metrics view / Grafana), tagged by run (`run`: the
    run's name), so two runs on one cluster keep their own series."""

    def __init__(self, run: str) -> None:
        from ray.util.metrics import Gauge

        self.tokens = Gauge("yxanul_global_tokens", description="Trained tokens, all workers", tag_keys=("run",))
        self.stage = Gauge("yxanul_stage", description="Current curriculum stage (1-based)", tag_keys=("run",))
        self.by_source = Gauge("yxanul_tokens_by_source", description="Trained tokens per source",
                               tag_keys=("run", "source"))
        self.rate = Gauge("yxanul_tokens_per_s", description="Training throughput, tokens/s", tag_keys=("run",))
        self.loss = Gauge("yxanul_loss", description="Training loss, mean over the log interval", tag_keys=("run",))
        for gauge in (self.tokens, self.stage, self.by_source, self.rate, self.loss):
            gauge.set_default_tags({"run": run})

    def update(self, p: dict) -> None:
        self.tokens.set(p.get("tokens", 0))
        self.stage.set(p.get("stage", 0))
        self.rate.set(p.get("tokens_per_s", 0.0))
        self.loss.set(p.get("loss", 0.0))
        for source, n in p.get("tokens_by_source", {}).items():
            self.by_source.set(n, tags={"source": source})
