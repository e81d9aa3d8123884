"""The per-run journal: what each step did, so a run can be resumed and audited.

One JSON file per run, ``STATE_DIR/RUN_ID.json``, rewritten atomically (temp file,
fsync, rename, fsync of the directory) after every step, so a crash or a power cut
leaves the previous complete version. It holds the run id, the runbook (name, path,
SHA-256 of the file), the target, the resolved variables (never secrets: variables
cannot contain them), the selection (``--from``/``--only``), and for each step its
status, timings, attempts, the last lines of its output (redacted) and a message.

Step statuses: ``ok`` (its state already held: nothing done), ``changed`` (applied,
and its probe holds now), ``skipped`` (``when`` is false), ``failed``, ``pending``
(``--dry-run``: would be applied), ``not-run`` (after a failure).
"""

from __future__ import annotations

import json
import re
import secrets as _random
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from drkit.atomicio import write_atomic
from drkit.runbook.errors import RunbookError

DEFAULT_STATE_DIR = Path("/var/lib/drkit/runbooks")
OUTPUT_TAIL_LINES = 20
FORMAT_VERSION = 1

OK, CHANGED, SKIPPED, FAILED, PENDING, NOT_RUN = "ok", "changed", "skipped", "failed", "pending", "not-run"
STATUSES = (OK, CHANGED, SKIPPED, FAILED, PENDING, NOT_RUN)
RUN_ID = re.compile(r"^\d{8}T\d{6}Z-[a-z0-9][a-z0-9._-]{0,62}-[0-9a-f]{6}$")


def utcnow() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class StepRecord:
    name: str
    status: str = NOT_RUN
    started: str | None = None
    finished: str | None = None
    duration: float = 0.0
    attempts: int = 0
    message: str = ""
    output_tail: list[str] = field(default_factory=list)


@dataclass
class Journal:
    """One run of one runbook. :meth:`save` after every change."""

    run_id: str
    runbook: str
    runbook_path: str
    runbook_sha256: str
    target: str
    connection: dict[str, str | None]
    variables: dict[str, str]
    overrides: dict[str, str]
    selection: dict[str, Any]
    status: str = "running"
    started: str = field(default_factory=utcnow)
    finished: str | None = None
    failed_step: str | None = None
    resumed: list[str] = field(default_factory=list)
    steps: list[StepRecord] = field(default_factory=list)
    version: int = FORMAT_VERSION
    state_dir: Path = field(default=DEFAULT_STATE_DIR, repr=False)

    @staticmethod
    def new_run_id(runbook: str) -> str:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        return f"{stamp}-{runbook}-{_random.token_hex(3)}"

    @property
    def path(self) -> Path:
        return self.state_dir / f"{self.run_id}.json"

    def record(self, name: str) -> StepRecord:
        for r in self.steps:
            if r.name == name:
                return r
        rec = StepRecord(name)
        self.steps.append(rec)
        return rec

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in STATUSES}
        for r in self.steps:
            out[r.status] = out.get(r.status, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("state_dir")
        return d

    def save(self) -> None:
        """Atomically replace the journal file (see module doc)."""
        write_atomic(self.path, json.dumps(self.to_dict(), indent=2) + "\n", parents=True)

    @classmethod
    def load(cls, state_dir: Path, run_id: str) -> "Journal":
        """Read the journal of *run_id*; raises RunbookError if missing or unreadable."""
        if not RUN_ID.match(run_id):
            raise RunbookError(f"bad run id {run_id!r}", hint="'drkit runbook status' lists the runs")
        path = state_dir / f"{run_id}.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise RunbookError(f"no run {run_id} in {state_dir}", hint="'drkit runbook status' lists the runs") from None
        except (OSError, ValueError) as exc:
            raise RunbookError(f"journal {path} is unreadable: {exc}") from None
        steps = [StepRecord(**s) for s in data.pop("steps", [])]
        known = {f for f in cls.__dataclass_fields__ if f != "state_dir"}
        j = cls(**{k: v for k, v in data.items() if k in known}, state_dir=state_dir)
        j.steps = steps
        return j

    @classmethod
    def list_runs(cls, state_dir: Path) -> list[str]:
        """Run ids in *state_dir*, oldest first (by start time; unreadable journals last)."""
        if not state_dir.is_dir():
            return []
        found = []
        for p in state_dir.glob("*.json"):
            run_id = p.name[:-5]
            if not RUN_ID.match(run_id):
                continue
            try:
                started = str(json.loads(p.read_text()).get("started", ""))
            except (OSError, ValueError):
                started = "~"
            found.append((started, run_id))
        return [run_id for _, run_id in sorted(found)]

    @classmethod
    def latest(cls, state_dir: Path) -> "Journal":
        runs = cls.list_runs(state_dir)
        if not runs:
            raise RunbookError(f"no runbook runs recorded in {state_dir}", hint="start one with 'drkit runbook run NAME'")
        return cls.load(state_dir, runs[-1])
