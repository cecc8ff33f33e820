"""Which partition of a projection an aggregate's events belong to.

An aggregate id goes to partition ``partition_of(aggregate_id, count)``: the first 15
hex digits of the MD5 of the id's canonical text (``str(uuid)``, lower case with
hyphens) read as an unsigned number, modulo ``count``. MD5 is no secret here, only a
hash that PostgreSQL (``md5()``) and Python (``hashlib``) compute alike, on every host
and in every release; Python's own ``hash`` is randomised per process and is never used.

Every event of one aggregate is in one partition, so a partition's reader sees them in
order; events of different aggregates are ordered within a partition only.

Splitting keeps cursors valid: with ``count`` multiplied by ``k``, an aggregate of
partition ``p`` lands in one of ``p, p + count, ..., p + (k - 1) * count``; each of
those may go on from ``p``'s checkpoint (``split_source``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from uuid import UUID

from psycopg import sql

#: The largest partition count a catalog may give (Akka's slices: 1,024).
MAX_PARTITIONS = 1024
_HEX_DIGITS = 15  # 60 bits: an unsigned value that fits PostgreSQL's signed bigint


@dataclass(frozen=True, order=True)
class Partition:
    """Partition ``index`` of a projection split ``count`` ways."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_PARTITIONS or not 0 <= self.index < self.count:
            raise ValueError(f"partition {self.index} of {self.count} does not exist")

    def holds(self, aggregate_id: UUID) -> bool:
        return partition_of(aggregate_id, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


WHOLE = Partition(0, 1)


def key_of(aggregate_id: UUID) -> int:
    """The aggregate's partitioning key (documented above; the same in SQL)."""
    return int(hashlib.md5(str(aggregate_id).encode("ascii")).hexdigest()[:_HEX_DIGITS], 16)


def partition_of(aggregate_id: UUID, count: int) -> int:
    return key_of(aggregate_id) % count


def key_sql(column: str) -> sql.Composed:
    """``key_of`` of a uuid column, computed by PostgreSQL."""
    return sql.SQL("(('x' || substr(md5({c}::text), 1, {n}))::bit({bits})::bigint)").format(
        c=sql.Identifier(column), n=sql.Literal(_HEX_DIGITS),
        bits=sql.Literal(_HEX_DIGITS * 4))


def split_source(index: int, old_count: int) -> int:
    """The partition of ``old_count`` whose checkpoint partition ``index`` of a count
    that is a multiple of ``old_count`` goes on from."""
    return index % old_count


def is_split(old_count: int, new_count: int) -> bool:
    return new_count > old_count and new_count % old_count == 0
