"""Data pipeline throughput and memory on the demo corpus (a benchmark, not a test).

For seq_len 8, 128 and 2048 it prints:
  - tokenize+pack in one process on one core (the GPT-2 BPE via tiktoken + the packer), tokens/s;
  - the full Ray path (read -> tokenize -> pack -> exact mix -> one consumer), tokens/s overall and
    per CPU core, from first row to last (steady state) and including the pipeline's cold start;
  - the peak memory (PSS) of all Ray processes during the run, and its rise over the idle level,
at 1x and 10x corpus size, so a reader can see that memory stays flat as the corpus grows.

    python benchmarks/benchmark_pipeline.py [--scales 1,10] [--seq-lens 8,128,2048] [--tokens 3000000]
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import threading
import time

from procfs import pss_bytes

PLASMA_USAGE = re.compile(r"Plasma memory usage (\d+) MiB")


def ray_processes() -> tuple[int, int]:
    """(PSS of every Ray process on this machine: raylet with its object store, GCS, workers; how
    many of them are Ray workers), from one pass over /proc. PSS, not RSS, so shared pages count
    once, not once per process."""
    pss, workers = 0, 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
            if b"ray" not in cmd or b"benchmark_pipeline" in cmd:
                continue
        except OSError:
            continue
        workers += cmd.startswith(b"ray::")
        pss += pss_bytes(pid)
    return pss, workers


def object_store_bytes() -> int:
    """Bytes held in Ray's object store (all nodes): the pipeline's data in flight."""
    from ray._private.internal_api import memory_summary

    m = PLASMA_USAGE.search(memory_summary(stats_only=True))
    return int(m.group(1)) * 2**20 if m else 0


class PeakSampler(threading.Thread):
    """Peaks during one run: Ray's memory (and its idle level just before: worker processes that
    earlier runs started stay alive, idle, in between), the object store's bytes (the data in
    flight, which Ray Data's backpressure bounds) and the number of Ray worker processes."""

    def __init__(self, interval_s: float = 0.5):
        super().__init__(daemon=True)
        self.interval_s, self._halt = interval_s, threading.Event()
        self.before = self.peak = ray_processes()[0]
        self.store_peak = self.workers_peak = 0

    def run(self) -> None:
        while not self._halt.is_set():
            pss, workers = ray_processes()
            self.peak, self.workers_peak = max(self.peak, pss), max(self.workers_peak, workers)
            self.store_peak = max(self.store_peak, object_store_bytes())
            self._halt.wait(self.interval_s)

    def stop(self) -> dict:
        self._halt.set()
        self.join()
        return {"idle_pss": self.before, "peak_pss": self.peak, "store_peak": self.store_peak,
                "workers_peak": self.workers_peak}


def in_process_rate(corpus: str, seq_len: int, chars_per_source: int = 3_000_000) -> float:
    """Tokenize + pack on this process's one thread: the per-core ceiling of the pipeline. The
    same sample at every corpus scale: each source's first `chars_per_source` characters."""
    import numpy as np
    import pyarrow.parquet as pq

    from yxanul_ray.cursors import SourceCursor
    from yxanul_ray.packing import Packer
    from yxanul_ray.tokenizer import load_tokenizer

    tok = load_tokenizer("gpt2")
    texts = []
    for source in ("fineweb", "math", "code"):
        folder, chars = os.path.join(corpus, source), 0
        for name in sorted(os.listdir(folder)):
            for text in pq.read_table(os.path.join(folder, name)).column("text").to_pylist():
                if chars >= chars_per_source:
                    break
                texts.append(text)
                chars += len(text)
    start = time.perf_counter()
    packer = Packer(seq_len, seq_len, tok.eos_id, 10**12, SourceCursor())
    tokens = 0
    for i in range(0, len(texts), 256):
        ids = tok.encode_batch(texts[i:i + 256])
        for j, doc in enumerate(ids):
            packer.add((0, 0, i + j, 0), np.asarray(doc, dtype=np.int32), True)
        tokens += packer.take_rows().shape[0] * seq_len
    return tokens / (time.perf_counter() - start)


def ray_rate(corpus: str, seq_len: int, tokens: int) -> dict:
    import ray

    from yxanul_ray.config import job_from_dict
    from yxanul_ray.hub import resolve_files
    from yxanul_ray.stage_data import build_stage_data, iter_worker_batches
    from yxanul_ray.stage_packers import StagePackers
    from yxanul_ray.tokenizer import load_tokenizer

    batch = max(8, (65536 // seq_len) // 8 * 8)
    tokens = tokens // (batch * seq_len) * batch * seq_len
    job = job_from_dict({
        "run": {"workers": 1},
        "data": {"tokenize_tasks": 2, "data_cpus": 0.25},
        "sources": {s: {"path": f"{corpus}/{s}/*.parquet", "validation_docs": 0} for s in ("fineweb", "math", "code")},
        "model": {"preset": "tiny"},
        "curriculum": {"target_tokens": tokens, "stages": [
            {"name": "bench", "seq_len": seq_len, "tokens": tokens, "batch_size": batch,
             "mix": {"fineweb": 0.55, "math": 0.25, "code": 0.20}}]},
    }, "<benchmark>")
    files = {s: resolve_files(spec) for s, spec in job.sources.items()}
    packers = StagePackers.remote()
    sampler = PeakSampler()
    sampler.start()
    t0 = time.perf_counter()
    sd = build_stage_data(job, 0, {}, 1, files, load_tokenizer("gpt2").eos_id, packers)
    [iterator] = sd.split(1)
    sd.start()
    first = None
    got = 0
    for b in iter_worker_batches(iterator, sd.schedule, {s: i for i, s in enumerate(job.sources)}):
        if first is None:
            first = time.perf_counter()
        got += b["tokens"].shape[0] * seq_len
    end = time.perf_counter()
    ray.get(sd.end_state)
    return {"tokens": got, "total_s": end - t0, "cold_s": first - t0,
            "steady_tok_s": got / max(1e-9, end - first), "overall_tok_s": got / (end - t0), **sampler.stop()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scales", default="1,10")
    ap.add_argument("--seq-lens", default="8,128,2048")
    ap.add_argument("--tokens", type=int, default=3_000_000, help="tokens per run at scale 1 (x scale)")
    ap.add_argument("--num-cpus", type=int, default=0, help="logical CPUs for Ray (default: 2 x cores)")
    args = ap.parse_args()

    from yxanul_ray.raycluster import local_ray_env

    local_ray_env()  # before `import ray`: Ray reads the auth mode when it loads
    import ray

    from yxanul_ray.demo_corpus import build_demo_corpus
    from yxanul_ray.raycluster import quiet_ray_data

    cores = os.cpu_count() or 1
    ray.init(address="local", num_cpus=args.num_cpus or 2 * cores, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1")
    quiet_ray_data()
    seq_lens = [int(s) for s in args.seq_lens.split(",")]
    print(f"machine: {cores} CPU cores; Ray with {args.num_cpus or 2 * cores} logical CPUs")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for scale in [float(s) for s in args.scales.split(",")]:
            corpus = os.path.join(tmp, f"x{scale:g}")
            counts = build_demo_corpus(corpus, scale=scale)
            chars = sum(c for _, c in counts.values())
            print(f"\ncorpus x{scale:g}: {chars / 1e6:.1f}M characters")
            for seq_len in seq_lens:
                single = in_process_rate(corpus, seq_len)
                r = ray_rate(corpus, seq_len, int(args.tokens * scale))
                rows.append((scale, seq_len, single, r))
                print(f"  seq {seq_len:>5}: tokenize+pack 1 core {single / 1e6:5.2f}M tok/s | Ray path "
                      f"{r['tokens'] / 1e6:5.1f}M tokens: steady {r['steady_tok_s'] / 1e6:5.2f}M tok/s "
                      f"({r['steady_tok_s'] / cores / 1e6:4.2f}M per core), with cold start "
                      f"{r['overall_tok_s'] / 1e6:5.2f}M tok/s, first batch after {r['cold_s']:.1f} s, "
                      f"Ray PSS peak {r['peak_pss'] / 2**30:.2f} GiB ({(r['peak_pss'] - r['idle_pss']) / 2**30:+.2f} "
                      f"over idle), object store peak {r['store_peak'] / 2**20:.0f} MiB, "
                      f"{r['workers_peak']} Ray worker processes", flush=True)
    print("\nsummary: scale, seq_len, 1-core tokenize+pack tok/s, Ray steady tok/s per core, peak Ray PSS GiB "
          "(over idle), object store peak MiB, Ray worker processes")
    for scale, seq_len, single, r in rows:
        print(f"  x{scale:<4g} {seq_len:>5} {single:>12,.0f} {r['steady_tok_s'] / cores:>12,.0f} "
              f"{r['peak_pss'] / 2**30:>6.2f} ({(r['peak_pss'] - r['idle_pss']) / 2**30:+.2f}) "
              f"{r['store_peak'] / 2**20:>6.0f} {r['workers_peak']:>4}")
    by_seq = {}
    for scale, seq_len, _, r in rows:
        by_seq.setdefault(seq_len, []).append((scale, r))
    for seq_len, runs in by_seq.items():
        if len(runs) > 1:
            (s0, r0), (s1, r1) = runs[0], runs[-1]
            print(f"  seq {seq_len}: x{s1:g} / x{s0:g} corpus: peak Ray PSS "
                  f"{r1['peak_pss'] / max(r0['peak_pss'], 1):.2f}, object store peak "
                  f"{r1['store_peak'] / max(r0['store_peak'], 1):.2f}, tokens streamed "
                  f"{r1['tokens'] / max(r0['tokens'], 1):.1f}")
    ray.shutdown()


if __name__ == "__main__":
    main()
