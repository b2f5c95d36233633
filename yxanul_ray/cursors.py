"""Where each source stopped, and what was consumed there: plain data that checkpoints carry.

A cursor points at the first token a stage has not yet trained as a target: a document
(epoch, file position in that epoch's file order, row, piece of a split document) and a token
offset inside it. The next stage re-reads from there, so no document is trained twice unless
the source runs dry and wraps into a new epoch (a new, seeded file order).
"""

from __future__ import annotations

import random
import zlib
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class SourceCursor:
    epoch: int = 0
    file_pos: int = 0
    """Index into file_order(epoch)."""
    row: int = 0
    piece: int = 0
    """Piece of a document longer than data.max_doc_chars."""
    token_offset: int = 0
    """Tokens of that piece already trained (the EOS counts as the piece's last token)."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SourceCursor:
        return cls(**d)

    def key(self) -> tuple[int, int, int, int]:
        return (self.epoch, self.file_pos, self.row, self.piece)


@dataclass
class SourceStats:
    """What one source contributed to one stage (or, summed, to the run)."""

    rows: int = 0
    trained_tokens: int = 0
    """Target positions in this source's rows."""
    distinct_tokens: int = 0
    """Source tokens consumed for the first time (less than trained_tokens when rows overlap)."""
    documents: int = 0
    """Documents (or their remainders) started."""
    eos: int = 0
    wraps: int = 0
    """Times the source ran dry and restarted in a new epoch."""
    bad: dict[str, int] = field(default_factory=dict)
    """Skipped or split rows by kind: null, empty, non_string, invalid_utf8, malformed_json,
    missing_field, split_long_doc."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SourceStats:
        return cls(**d)

    def add(self, other: SourceStats) -> SourceStats:
        bad = dict(self.bad)
        for k, v in other.bad.items():
            bad[k] = bad.get(k, 0) + v
        return SourceStats(self.rows + other.rows, self.trained_tokens + other.trained_tokens,
                           self.distinct_tokens + other.distinct_tokens, self.documents + other.documents,
                           self.eos + other.eos, self.wraps + other.wraps, bad)


def file_order(num_files: int, epoch: int, seed: int, source: str) -> list[int]:
    """File indices in the order epoch `epoch` reads them: sorted first, then a seeded shuffle.

    A source that runs dry wraps into the next epoch with a different order, so the repeat is
    not a replay of the same document sequence.
    """
    order = list(range(num_files))
    if epoch > 0:
        salt = zlib.crc32(source.encode())
        random.Random((seed * 1_000_003 + salt) * 1_000_003 + epoch).shuffle(order)
    return order
