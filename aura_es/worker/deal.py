"""How a projection's partitions are dealt among its live workers.

Every worker computes the same deal from the same list of live members (oldest first,
``presence.members``): partition ``p`` goes to member ``p mod W``. Each partition has
exactly one member, members' shares differ by at most one, and members beyond the
partition count get none: they are hot standbys. With one partition the oldest live
worker runs it, so a restarted worker (the youngest) never takes it from a healthy one.
"""

from __future__ import annotations

from collections.abc import Sequence


def deal(members: Sequence[str], partitions: int) -> dict[str, frozenset[int]]:
    """Each member's partitions (an empty set for a standby)."""
    shares: dict[str, set[int]] = {member: set() for member in members}
    if members:
        for partition in range(partitions):
            shares[members[partition % len(members)]].add(partition)
    return {member: frozenset(share) for member, share in shares.items()}


def share_of(member: str, members: Sequence[str], partitions: int) -> frozenset[int]:
    """``member``'s partitions; none while it is not among the live members yet."""
    return deal(members, partitions).get(member, frozenset())
