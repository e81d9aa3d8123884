"""Retention: which snapshots a keep-policy keeps (restic's semantics), per source.

Snapshots are grouped by source (and host). Within a group, newest first:

- ``keep_last N``: the N newest;
- ``keep_hourly/daily/weekly/monthly/yearly N``: the newest snapshot of each of the
  N most recent hours/days/ISO weeks/months/years that have a snapshot;
- ``keep_within D``: everything within D (e.g. ``7d``, ``2w3d``, ``12h``, ``6M``; parsed
  by :func:`drkit.units.parse_keep_within`, as the config check is) of *now*,
  the clock of the host running forget (not the newest claimed snapshot time: one
  snapshot dated 2099 must not push every real one out of the window);
- ``keep_tags``: every snapshot carrying one of these tags.

A snapshot is kept if any rule keeps it. The newest snapshot of a group that is not
dated in the future is always kept by any non-empty policy, so a policy never empties
a group (with a clock-anchored ``keep_within``, a group whose backups stopped long ago
keeps its newest snapshot).

**Future-dated snapshots** (time later than now + :data:`FUTURE_TOLERANCE`) are never
an anchor: no rule counts them (they take no ``keep_last`` slot and no daily bucket),
and they are kept and flagged ("future-dated") for a human to judge; ``drkit
snapshots`` and ``drkit verify`` flag them too. A backup host whose clock runs ahead
makes them; so does a hostile writer trying to game retention.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable

from drkit.repository.repo import FUTURE_SKEW
from drkit.repository.snapshot import Snapshot

FUTURE_TOLERANCE = FUTURE_SKEW
"""Clock skew allowed between a backup host and the host judging its snapshots."""


def is_future(snap: Snapshot, now: datetime, tolerance: timedelta = FUTURE_TOLERANCE) -> bool:
    """True if *snap* claims a time later than *now* + *tolerance*."""
    return snap.datetime > now + tolerance


def future_snapshots(snapshots: list[Snapshot], now: datetime | None = None) -> list[Snapshot]:
    """The snapshots dated in the future (see :func:`is_future`), oldest first."""
    now = now or datetime.now(timezone.utc)
    return [s for s in snapshots if is_future(s, now)]


def future_warning(snap: Snapshot) -> str:
    """The one line ``snapshots`` and ``verify`` print for a future-dated snapshot."""
    return (
        f"warning: snapshot {snap.short_id} is dated in the future ({snap.time[:19]}, source {snap.source}, host {snap.host}): "
        "retention never counts it; check that host's clock, or who wrote it"
    )


@dataclass
class Policy:
    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: timedelta | None = None
    tags: list[str] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.last or self.hourly or self.daily or self.weekly or self.monthly or self.yearly or self.within or self.tags)

    def count_based(self) -> bool:
        return bool(self.last or self.hourly or self.daily or self.weekly or self.monthly or self.yearly)


_BUCKETS: list[tuple[str, Callable[[datetime], tuple[int, ...]]]] = [
    ("hourly", lambda t: (t.year, t.month, t.day, t.hour)),
    ("daily", lambda t: (t.year, t.month, t.day)),
    ("weekly", lambda t: tuple(t.isocalendar()[:2])),
    ("monthly", lambda t: (t.year, t.month)),
    ("yearly", lambda t: (t.year,)),
]


@dataclass
class Decision:
    snapshot: Snapshot
    keep: bool
    reasons: list[str]


def apply_policy(snapshots: list[Snapshot], policy: Policy, now: datetime | None = None) -> list[Decision]:
    """Decide for every snapshot; grouped by (source, host). Pure given *now* (default:
    the current time), which anchors ``keep_within`` and tells future-dated snapshots."""
    now = now or datetime.now(timezone.utc)
    groups: dict[tuple[str, str], list[Snapshot]] = defaultdict(list)
    out: list[Decision] = []
    for s in snapshots:
        if is_future(s, now):
            out.append(Decision(s, True, ["future-dated"]))
        else:
            groups[(s.source, s.host)].append(s)
    for group in groups.values():
        group.sort(key=lambda s: (s.datetime, s.id), reverse=True)
        reasons: dict[str, list[str]] = {s.id: [] for s in group}
        for s in group[: policy.last]:
            reasons[s.id].append("last")
        for name, key in _BUCKETS:
            limit = getattr(policy, name)
            if not limit:
                continue
            seen: set[tuple[int, ...]] = set()
            for s in group:
                bucket = key(s.datetime)
                if bucket in seen:
                    continue
                if len(seen) >= limit:
                    break
                seen.add(bucket)
                reasons[s.id].append(name)
        if policy.within is not None:
            for s in group:
                if now - s.datetime <= policy.within:
                    reasons[s.id].append("within")
        if policy.tags:
            for s in group:
                if set(s.tags) & set(policy.tags):
                    reasons[s.id].append("tag")
        if group and not policy.empty() and not any(reasons.values()):
            reasons[group[0].id].append("newest")
        for s in group:
            out.append(Decision(s, bool(reasons[s.id]), reasons[s.id]))
    out.sort(key=lambda d: (d.snapshot.source, d.snapshot.datetime))
    return out
