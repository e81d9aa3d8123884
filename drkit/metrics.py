"""Prometheus metrics in node-exporter's textfile format.

When the config has ``metrics: {textfile: /var/lib/node_exporter/textfile/drkit.prom}``,
every drkit command records its outcome in that file, which node-exporter's textfile
collector (``--collector.textfile.directory``) exposes to Prometheus. The alert rules
and the Grafana dashboard in ``config/`` read these series; ``docs/monitoring.md``
describes them.

Promises:

- **Atomic**: the file is written to a temporary name in the same directory, fsynced
  and renamed over the old one; node-exporter never reads a half-written file.
- **Merged**: a run replaces only the series it produced. The last success of
  ``backup`` for source ``etcd`` stays in the file when ``verify`` runs, and a failed
  run updates ``last_failure`` but keeps the previous ``last_success``. Concurrent
  writers (a manual run during a scheduled one) are serialised by an ``flock`` on a
  sidecar lock file, so no update is lost.
- **Secret-free**: label values pass through :func:`drkit.redact.redact` (values are
  numbers, help texts are fixed).

Labels: ``command`` (backup, verify, forget, prune, drill ...) and ``source``. The
command label is deliberately not called ``job``: Prometheus attaches its own ``job``
label to every scraped series and would rename ours to ``exported_job``. Commands that
work on the whole repository (verify, prune) write their series without a ``source``
label. ``last_success``/``last_failure`` are 0 when that outcome never happened, so
"never succeeded" looks like "succeeded long ago" to the age alerts.

How commands use it (see :func:`track`)::

    with metrics.track(state, "backup", sources=[s.name for s in sources]) as run:
        for src in sources:
            ...
            run.add(src.name, ok=True, duration=dt,
                    values={"backup_read_bytes": r, "backup_added_bytes": a,
                            "backup_stored_bytes": s, "snapshots": n})
        run.values["repository_size_bytes"] = total

On an exception the sources not yet reported are recorded as failed and the exception
propagates. Writing the file never changes a command's outcome: a write error is
logged (one line) and the command goes on.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Union, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from drkit.atomicio import write_atomic
from drkit.errors import ConfigError
from drkit.redact import redact
from drkit.units import Duration

log = logging.getLogger(__name__)


class RawSections(Protocol):
    """The parsed config sections metrics reads (:class:`drkit.config.RawConfig` is one)."""

    @property
    def metrics(self) -> Mapping[str, Any] | None: ...


@runtime_checkable
class ConfigLike(Protocol):
    """A loaded config (:class:`drkit.config.Config` is one)."""

    @property
    def raw(self) -> RawSections: ...


class HasConfig(Protocol):
    """Something that loads the config on demand (the CLI's state is one)."""

    @property
    def config(self) -> ConfigLike: ...


ConfigSource = Union[ConfigLike, HasConfig]
"""What the hooks take: a loaded config, or what holds one. Structural types, so this
module needs neither the CLI nor the config module."""

PREFIX = "drkit_"


@dataclass(frozen=True)
class MetricSpec:
    """One metric family drkit writes."""

    name: str
    help: str
    labels: tuple[str, ...]
    type: str = "gauge"


_CS = ("command", "source")
METRICS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        MetricSpec("drkit_last_success_timestamp_seconds",
                   "Unix time of the last successful run of a drkit command, per source (0: never).", _CS),
        MetricSpec("drkit_last_failure_timestamp_seconds",
                   "Unix time of the last failed run of a drkit command, per source (0: never).", _CS),
        MetricSpec("drkit_job_duration_seconds", "Wall-clock duration of the last run of a drkit command.", _CS),
        MetricSpec("drkit_backup_read_bytes", "Bytes read from the source by its last backup.", ("source",)),
        MetricSpec("drkit_backup_added_bytes",
                   "New (not deduplicated) data in the last backup of the source, before compression.", ("source",)),
        MetricSpec("drkit_backup_stored_bytes",
                   "Bytes the last backup of the source uploaded (compressed and encrypted).", ("source",)),
        MetricSpec("drkit_snapshots", "Snapshots of the source in the repository.", ("source",)),
        MetricSpec("drkit_repository_size_bytes", "Total size of the repository's objects on storage.", ()),
        MetricSpec("drkit_verify_ok", "1 if the last verify at this level found no problem, else 0.", ("level",)),
        MetricSpec("drkit_verify_damaged_objects", "Damaged or missing objects found by the last verify.", ("level",)),
        MetricSpec("drkit_drill_success", "1 if the last restore drill of the source succeeded, else 0.", ("source",)),
        MetricSpec("drkit_drill_rto_seconds", "Time the last restore drill took to restore the source.", ("source",)),
        MetricSpec("drkit_drill_rpo_seconds",
                   "Age of the snapshot the last drill restored, at drill time (data that would be lost).",
                   ("source",)),
        MetricSpec("drkit_rpo_target_seconds",
                   "Configured recovery point objective: the oldest a last good backup may be.", ("source",)),
        MetricSpec("drkit_rto_budget_seconds",
                   "Configured recovery time objective: the longest a restore may take.", ("source",)),
    )
}

Labels = tuple[tuple[str, str], ...]
SeriesKey = tuple[str, Labels]


def metric_name(key: str) -> str:
    """The full name for *key* (``snapshots`` or ``drkit_snapshots``); ValueError if unknown."""
    name = key if key.startswith(PREFIX) else PREFIX + key
    if name not in METRICS:
        raise ValueError(f"unknown drkit metric {key!r} (known: {', '.join(sorted(METRICS))})")
    return name


# --- configuration -----------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceTargets(_Strict):
    rpo_target: Duration | None = None
    rto_budget: Duration | None = None


class MetricsConfig(_Strict):
    """The ``metrics:`` section of the config file."""

    textfile: Path
    """The .prom file node-exporter's textfile collector reads (absolute path)."""
    rpo_target: Duration = Field(default=26 * 3600.0)
    """Default RPO target (a daily backup plus slack): ``DrkitBackupTooOld`` fires past it."""
    rto_budget: Duration = Field(default=4 * 3600.0)
    """Default RTO budget: ``DrkitDrillOverBudget`` fires when a drill takes longer.
    Unset, it is ``drill.rto_budget_seconds`` when that is set (else 4h)."""
    sources: dict[str, SourceTargets] = Field(default_factory=dict)
    """Per-source overrides of rpo_target / rto_budget."""

    @field_validator("textfile")
    @classmethod
    def _textfile(cls, v: Path) -> Path:
        if not v.is_absolute():
            raise ValueError("must be an absolute path")
        if v.suffix != ".prom":
            raise ValueError("must end in .prom (node-exporter's textfile collector reads only *.prom)")
        return v

    def targets(self, source: str) -> tuple[float, float]:
        """(rpo_target, rto_budget) in seconds for *source*."""
        own = self.sources.get(source)
        rpo = own.rpo_target if own and own.rpo_target is not None else self.rpo_target
        rto = own.rto_budget if own and own.rto_budget is not None else self.rto_budget
        return float(rpo), float(rto)


def parse_metrics_config(data: Mapping[str, Any] | None) -> MetricsConfig | None:
    """Validate the ``metrics:`` section; None when absent. Raises ConfigError naming ``metrics.KEY``."""
    if data is None:
        return None
    if not isinstance(data, Mapping):
        raise ConfigError("must be a mapping with a 'textfile' key", key="metrics")
    try:
        return MetricsConfig.model_validate(dict(data))
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ConfigError(
            err["msg"].removeprefix("Value error, "),
            key=f"metrics.{loc}" if loc else "metrics",
            hint="e.g. metrics: {textfile: /var/lib/node_exporter/textfile/drkit.prom}",
        ) from None


# --- the text format ---------------------------------------------------------------

_LINE_RE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)(?:\s+\d+)?\s*$")
_LABEL_RE = re.compile(r'\s*(?P<k>[a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"(?P<v>(?:[^"\\]|\\.)*)"\s*,?')


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(round(float(value), 6))


def parse_textfile(text: str) -> dict[SeriesKey, float]:
    """The drkit series in a textfile (unknown names and malformed lines are skipped)."""
    out: dict[SeriesKey, float] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _LINE_RE.match(line)
        if not m or m["name"] not in METRICS:
            continue
        labels: list[tuple[str, str]] = []
        raw = m["labels"] or ""
        pos = 0
        ok = True
        while pos < len(raw):
            lm = _LABEL_RE.match(raw, pos)
            if not lm or lm.end() == pos:
                ok = False
                break
            labels.append((lm["k"], _unescape(lm["v"])))
            pos = lm.end()
        if not ok:
            continue
        try:
            value = float(m["value"])
        except ValueError:
            continue
        out[(m["name"], tuple(sorted(labels)))] = value
    return out


def render_textfile(series: Mapping[SeriesKey, float]) -> str:
    """Render series in the text exposition format, families in :data:`METRICS` order."""
    lines: list[str] = []
    for name, spec in METRICS.items():
        rows = sorted((labels, v) for (n, labels), v in series.items() if n == name)
        if not rows:
            continue
        lines.append(f"# HELP {name} {spec.help}")
        lines.append(f"# TYPE {name} {spec.type}")
        for labels, value in rows:
            lab = ",".join(f'{k}="{_escape(redact(v))}"' for k, v in labels)
            lines.append(f"{name}{{{lab}}} {_format_value(value)}" if lab else f"{name} {_format_value(value)}")
    return "\n".join(lines) + "\n" if lines else ""


# --- the sink ----------------------------------------------------------------------


@dataclass
class Outcome:
    """The result of one command for one source (``source=None``: the whole repository)."""

    source: str | None
    ok: bool
    duration: float | None = None
    values: dict[str, float] = field(default_factory=dict)
    """Metric short names (``backup_read_bytes``) or full names to values."""


def _labels(spec: MetricSpec, command: str, source: str | None, extra: Mapping[str, str]) -> Labels:
    given = {"command": command, "source": source or "", **extra}
    out = []
    for label in spec.labels:
        value = given.get(label, "")
        if value:  # an empty label value is the same as no label in Prometheus
            out.append((label, str(value)))
    return tuple(sorted(out))


class MetricsSink:
    """Writes drkit's metrics to one textfile (see the module doc for the promises)."""

    def __init__(self, config: MetricsConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.path = config.textfile
        self.clock = clock

    @classmethod
    def from_config(cls, config: ConfigLike | Mapping[str, Any] | None, *,
                    clock: Callable[[], float] = time.time) -> MetricsSink | None:
        """The sink for a loaded :class:`~drkit.config.Config` (or its ``metrics`` mapping);
        None when metrics are not configured. Raises ConfigError for a bad section."""
        section: Mapping[str, Any] | None
        drill_budget = None
        if isinstance(config, Mapping) or config is None:
            section = config
        else:
            section = config.raw.metrics
            drill = getattr(config.raw, "drill", None)
            if isinstance(drill, Mapping) and isinstance(drill.get("rto_budget_seconds"), (int, float)):
                drill_budget = float(drill["rto_budget_seconds"])
        parsed = parse_metrics_config(section)
        if parsed is None:
            return None
        if drill_budget is not None and "rto_budget" not in (section or {}):
            # one budget: the one 'drkit drill' enforces (exit 7) is the one the alert uses
            parsed.rto_budget = drill_budget
        return cls(parsed, clock=clock)

    def samples(
        self,
        command: str,
        outcomes: Iterable[Outcome],
        *,
        labels: Mapping[str, str] | None = None,
        now: float | None = None,
        gauges: Iterable[tuple[str, str | None, float]] = (),
    ) -> dict[SeriesKey, float]:
        """The series a run produces (without touching the file). ValueError on an unknown metric.

        *gauges* are (metric, source, value) values that are not an outcome (the snapshot
        count of a source this run did not back up, the repository size)."""
        now = self.clock() if now is None else now
        extra = dict(labels or {})
        out: dict[SeriesKey, float] = {}

        def put(key: str, source: str | None, value: float) -> None:
            spec = METRICS[metric_name(key)]
            if "source" in spec.labels and spec.labels != _CS and not source:
                raise ValueError(f"metric {spec.name} needs a source")
            out[(spec.name, _labels(spec, command, source, extra))] = float(value)

        for oc in outcomes:
            put("last_success_timestamp_seconds" if oc.ok else "last_failure_timestamp_seconds", oc.source, now)
            if oc.duration is not None:
                put("job_duration_seconds", oc.source, oc.duration)
            for key, value in oc.values.items():
                put(key, oc.source, value)
            if oc.source:
                rpo, rto = self.config.targets(oc.source)
                put("rpo_target_seconds", oc.source, rpo)
                put("rto_budget_seconds", oc.source, rto)
        for key, source, value in gauges:
            put(key, source, value)
        return out

    def write(self, new: Mapping[SeriesKey, float]) -> None:
        """Merge *new* into the file atomically, under an exclusive lock.

        A (command, source) seen for the first time gets the other outcome's timestamp
        set to 0. Raises ConfigError (key ``metrics.textfile``) when the file cannot
        be written.
        """
        lock_path = self.path.parent / f".{self.path.name}.lock"
        try:
            with open(lock_path, "a") as lock:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
                try:
                    text = self.path.read_text()
                except FileNotFoundError:
                    text = ""
                series = parse_textfile(text)
                series.update(new)
                for (name, labels) in list(new):
                    for other in ("drkit_last_success_timestamp_seconds", "drkit_last_failure_timestamp_seconds"):
                        if name in ("drkit_last_success_timestamp_seconds", "drkit_last_failure_timestamp_seconds"):
                            series.setdefault((other, labels), 0.0)
                # 0644: node-exporter usually runs as another user (the file holds no secret);
                # the temporary's name does not end in .prom, so it is never collected.
                write_atomic(self.path, render_textfile(series), mode=0o644)
        except OSError as exc:
            raise ConfigError(
                f"cannot write metrics file {self.path}: {exc.strerror or exc}",
                key="metrics.textfile",
                hint="the directory must exist and be writable by drkit (node-exporter's --collector.textfile.directory)",
            ) from None

    def record(
        self,
        job: str,
        *,
        source: str | None = None,
        ok: bool,
        duration: float | None = None,
        values: Mapping[str, float] | None = None,
        labels: Mapping[str, str] | None = None,
        now: float | None = None,
    ) -> None:
        """Record one outcome of command *job* and write the file (see :meth:`write`)."""
        self.write(self.samples(job, [Outcome(source, ok, duration, dict(values or {}))], labels=labels, now=now))

    def record_many(
        self,
        job: str,
        outcomes: Iterable[Outcome],
        *,
        labels: Mapping[str, str] | None = None,
        now: float | None = None,
        gauges: Iterable[tuple[str, str | None, float]] = (),
    ) -> None:
        """Record several outcomes (and plain gauges) of one run in a single write."""
        self.write(self.samples(job, outcomes, labels=labels, now=now, gauges=gauges))

    def read(self) -> dict[SeriesKey, float]:
        """The drkit series currently in the file (empty when it does not exist)."""
        try:
            return parse_textfile(self.path.read_text())
        except FileNotFoundError:
            return {}


# --- the hooks commands call -------------------------------------------------------


def _config_of(state_or_config: ConfigSource) -> ConfigLike:
    if isinstance(state_or_config, ConfigLike):
        return state_or_config
    return state_or_config.config  # the CLI state loads it on first use


def record_job(
    state_or_config: ConfigSource,
    job: str,
    outcomes: Iterable[Outcome],
    *,
    labels: Mapping[str, str] | None = None,
    now: float | None = None,
) -> bool:
    """Record a finished command's outcomes if metrics are configured.

    *state_or_config* is the :class:`~drkit.cli.app.CliState` or a loaded Config.
    Never raises for a write problem (logs one error line instead: metrics must not
    change a command's result). Returns True when the file was written.
    """
    try:
        sink = MetricsSink.from_config(_config_of(state_or_config))
        if sink is None:
            return False
        sink.record_many(job, list(outcomes), labels=labels, now=now)
        return True
    except ConfigError as exc:
        log.error("metrics not written: %s", exc.message)
        return False


@dataclass
class Run:
    """Collects the outcomes of one command run (see :func:`track`)."""

    command: str
    sources: list[str]
    started: float
    outcomes: dict[str | None, Outcome] = field(default_factory=dict)
    values: dict[str, float] = field(default_factory=dict)
    """Values of the whole run (``repository_size_bytes``, ``verify_ok`` ...)."""
    labels: dict[str, str] = field(default_factory=dict)
    """Extra labels (``level`` for verify)."""
    ok: bool | None = None
    """Set to False to record the run as failed without raising."""
    gauges: list[tuple[str, str | None, float]] = field(default_factory=list)

    def set(self, metric: str, value: float, *, source: str | None = None) -> None:
        """Record a plain value that is not an outcome (``snapshots`` of a source,
        ``repository_size_bytes``); ValueError for an unknown metric."""
        metric_name(metric)
        self.gauges.append((metric, source, float(value)))

    def add(self, source: str | None, *, ok: bool, duration: float | None = None,
            values: Mapping[str, float] | None = None) -> None:
        """Record the outcome for one source (a second call for the same source replaces it)."""
        self.outcomes[source] = Outcome(source, ok, duration, dict(values or {}))


@contextlib.contextmanager
def track(
    state_or_config: ConfigSource,
    command: str,
    *,
    sources: Iterable[str] = (),
    clock: Callable[[], float] = time.time,
    enabled: bool = True,
) -> Iterator[Run]:
    """Time a command and record its outcome on exit (only when metrics are configured).

    - Sources in *sources* that the block did not :meth:`Run.add` are recorded as
      succeeded when the block returns and as failed when it raises.
    - Without *sources* and without any ``add``, one source-less outcome is written
      (ok unless the block raised or set ``run.ok = False``), carrying ``run.values``.
    - ``run.values`` of the whole run go with the source-less outcome.

    Raises ConfigError up front when the ``metrics:`` section is invalid; write errors
    are only logged. The block's exception always propagates unchanged.
    ``enabled=False`` (a dry run) records nothing.
    """
    config = _config_of(state_or_config)
    sink = MetricsSink.from_config(config, clock=clock) if enabled else None
    run = Run(command=command, sources=list(sources), started=clock())
    failed = False
    try:
        yield run
    except BaseException as exc:
        failed = not (isinstance(exc, SystemExit) and exc.code in (0, None)) and getattr(exc, "exit_code", 1) != 0
        raise
    finally:
        if sink is not None:
            ended = clock()
            elapsed = ended - run.started
            outcomes = dict(run.outcomes)
            for name in run.sources:
                outcomes.setdefault(name, Outcome(name, not failed, elapsed))
            whole_ok = not failed and run.ok is not False
            if None in outcomes:
                outcomes[None].values.update(run.values)
                outcomes[None].ok = outcomes[None].ok and whole_ok
            elif run.values or not outcomes:
                outcomes[None] = Outcome(None, whole_ok, elapsed, dict(run.values))
            try:
                sink.record_many(command, outcomes.values(), labels=run.labels, gauges=run.gauges, now=ended)
            except ConfigError as exc:
                log.error("metrics not written: %s", exc.message)
            except ValueError as exc:  # a programming error in the caller: say so, do not mask
                log.error("metrics not written: %s", exc)


# --- adapters for the commands' results (duck-typed: no import of the services) ----


def backup_outcomes(run: Any) -> list[Outcome]:
    """Outcomes of a :class:`drkit.services.backup.BackupRun` (one per source)."""
    out = []
    for o in getattr(run, "outcomes", []):
        values: dict[str, float] = {}
        snap = getattr(o, "snapshot", None)
        stats = getattr(snap, "stats", None) or {}
        if snap is not None:
            values = {
                "backup_read_bytes": float(stats.get("bytes_read", 0)),
                "backup_added_bytes": float(stats.get("bytes_added", 0)),
                "backup_stored_bytes": float(stats.get("bytes_stored", 0)),
            }
        out.append(Outcome(o.source, getattr(o, "error", None) is None and snap is not None,
                           float(getattr(o, "seconds", 0.0)), values))
    return out


def record_repository_state(run: Run, repo: Any) -> None:
    """Add the snapshot count per source and the repository size to *run*.

    Best effort: what cannot be read (a manifest this host cannot decrypt, a storage
    error) is left out with a debug line; never raises for it.
    """
    try:
        counts: dict[str, int] = {}
        for snap in repo.list_snapshots(on_error=lambda name, detail: None):
            counts[snap.source] = counts.get(snap.source, 0) + 1
        for source, n in counts.items():
            run.set("snapshots", n, source=source)
    except Exception as exc:  # noqa: BLE001 - metrics are best effort
        log.debug("snapshot counts not recorded: %s", exc)
    try:
        from drkit.repository import layout

        total = 0
        for prefix in (layout.DATA, layout.INDEX, layout.SNAPSHOTS, layout.KEYS):
            total += sum(info.size for info in repo.storage.list(prefix))
        run.set("repository_size_bytes", total)
    except Exception as exc:  # noqa: BLE001
        log.debug("repository size not recorded: %s", exc)


def record_backup(run: Run, backup_run: Any, repo: Any) -> None:
    """Add a backup run's per-source outcomes, snapshot counts and repository size to *run*."""
    for oc in backup_outcomes(backup_run):
        run.add(oc.source, ok=oc.ok, duration=oc.duration, values=oc.values)
    record_repository_state(run, repo)
