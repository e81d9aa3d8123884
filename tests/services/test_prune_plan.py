"""The prune plan is a pure function of what the repository holds: tested from tables."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from drkit.repository import layout
from drkit.repository.pack import PackEntry
from drkit.services.prune import ORPHAN_GRACE, PruneFacts, StoredPack, plan_prune

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=timezone.utc)
OLD = NOW - 2 * ORPHAN_GRACE
YOUNG = NOW - ORPHAN_GRACE / 4


def pid(name: str) -> str:
    return (name * 64)[:64]


def blob(name: str) -> bytes:
    return name.encode().ljust(32, b"_")


def entries(*spec: tuple[str, int]) -> list[PackEntry]:
    """(blob name, length) -> entries laid out back to back."""
    out, offset = [], 8
    for name, length in spec:
        out.append(PackEntry(0, blob(name), offset, length, length))
        offset += length
    return out


def facts(indexed: dict[str, list[PackEntry]], used: str, *, stored: dict[str, datetime | None] | None = None,
          listed_by_superseded: set[str] = frozenset()) -> PruneFacts:  # type: ignore[assignment]
    stored_at = stored if stored is not None else {p: OLD for p in indexed}
    return PruneFacts(
        used={blob(c) for c in used},
        indexed=indexed,
        indexed_sizes={p: 100 for p in indexed},
        stored={p: StoredPack(100, t) for p, t in stored_at.items()},
        listed_by_superseded=set(listed_by_superseded),
    )


A, B, C, D = pid("a"), pid("b"), pid("c"), pid("d")

# name, indexed packs, used blobs, stored (None: as indexed, all old), expected (keep, drop, repack, orphans, young, unsafe)
CASES = [
    ("all used: keep", {A: entries(("x", 10), ("y", 10))}, "xy", None, ([A], [], [], [], [], False)),
    ("nothing used: drop", {A: entries(("x", 10))}, "", None, ([], [A], [], [], [], False)),
    ("mostly unused: repack", {A: entries(("x", 10), ("y", 30))}, "x", None, ([], [], [A], [], [], False)),
    ("little unused: keep", {A: entries(("x", 30), ("y", 10))}, "x", None, ([A], [], [], [], [], False)),
    ("duplicate pack: the smaller goes", {A: entries(("x", 10)), B: entries(("x", 10), ("y", 10))}, "xy", None,
     ([B], [A], [], [], [], False)),
    ("old orphan: delete", {A: entries(("x", 10))}, "x", {A: OLD, B: OLD}, ([A], [], [], [B], [], False)),
    ("young orphan: keep", {A: entries(("x", 10))}, "x", {A: OLD, B: YOUNG}, ([A], [], [], [], [B], False)),
    ("orphan of unknown age: keep", {A: entries(("x", 10))}, "x", {A: OLD, B: None}, ([A], [], [], [], [B], False)),
    ("used blob in no index: unsafe", {A: entries(("x", 10))}, "xz", {A: OLD, B: OLD}, ([A], [], [], [B], [], True)),
    ("used blob only in a missing pack: unsafe", {A: entries(("x", 10)), B: entries(("z", 10))}, "xz", {A: OLD},
     ([A], [], [], [], [], True)),
]


@pytest.mark.parametrize("name,indexed,used,stored,want", CASES, ids=[c[0] for c in CASES])
def test_plan_table(name: str, indexed: dict, used: str, stored: dict | None, want: tuple) -> None:
    plan = plan_prune(facts(indexed, used, stored=stored), now=NOW)
    keep, drop, repack, orphans, young, unsafe = want
    got = (sorted(plan.keep), sorted(plan.drop), sorted(plan.repack), sorted(plan.orphans), sorted(plan.young_orphans), not plan.safe)
    assert got == (sorted(keep), sorted(drop), sorted(repack), sorted(orphans), sorted(young), unsafe)


def test_an_unreadable_copy_is_not_a_copy() -> None:
    """A and B both hold x: one goes, and the copy that stays is read first. Told that
    B's copy is unreadable, the plan keeps A instead; with no good copy left it is unsafe."""
    f = facts({A: entries(("x", 10)), B: entries(("x", 10))}, "x")
    plan = plan_prune(f, now=NOW)
    assert sorted(plan.drop) == [A] and plan.keep == [B]
    assert plan.check_copies == [(B, blob("x"))], "the copy that stays is read before its twin is deleted"
    plan = plan_prune(f, now=NOW, unreadable={(B, blob("x"))})
    assert plan.keep == [A] and plan.drop == [B] and plan.check_copies == [(A, blob("x"))]
    plan = plan_prune(f, now=NOW, unreadable={(A, blob("x")), (B, blob("x"))})
    assert not plan.safe and plan.missing == [blob("x")]
    assert "refusing to delete anything" in plan.refusal()


def test_locked_objects_stay_and_packs_listed_by_a_superseded_index_are_held() -> None:
    f = facts({A: entries(("x", 10)), B: entries(("y", 10))}, "y", stored={A: OLD, B: OLD, C: OLD, D: OLD},
              listed_by_superseded={D})
    plan = plan_prune(f, now=NOW, locked={layout.pack_name(A), layout.pack_name(C)})
    assert sorted(plan.keep) == sorted([A, B]) and plan.drop == [] and plan.orphans == []
    assert plan.held_orphans == [D]
    assert sorted(plan.locked) == sorted([layout.pack_name(A), layout.pack_name(C)])


def test_plan_lines_name_every_decision_and_never_say_deleted() -> None:
    f = facts({A: entries(("x", 10)), B: entries(("y", 10), ("z", 30))}, "y", stored={A: OLD, B: OLD, C: OLD, D: YOUNG})
    text = "\n".join(plan_prune(f, now=NOW).lines())
    assert f"drop           {layout.pack_name(A)}" in text
    assert f"repack         {layout.pack_name(B)}" in text
    assert f"delete orphan  {layout.pack_name(C)}" in text
    assert layout.pack_name(D) in text and "grace period" in text
    assert "deleted" not in text
    assert text.endswith("plan: keep 0 pack(s), drop 1, repack 1, delete 1 orphan(s) (keep 1); 1 blob(s) used, 2 unused")


def test_grace_is_measured_on_the_given_clock() -> None:
    f = facts({A: entries(("x", 10))}, "x", stored={A: OLD, B: NOW - timedelta(hours=1)})
    assert plan_prune(f, now=NOW).young_orphans == [B]
    assert plan_prune(f, now=NOW + ORPHAN_GRACE).orphans == [B]
