"""``drkit drill``: restore the latest backups into a scratch place and check them."""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import click

from drkit import metrics
from drkit.cli.app import CliState, cli, pass_state
from drkit.cli.common import human_size, identity_option, open_repository
from drkit.config import Environment, load_config
from drkit.errors import DrkitError, UsageError
from drkit.repository.repo import Repository
from drkit.services.backup import BackupOptions, BackupRun, run_backup
from drkit.services.drill import (
    DrillOptions,
    DrillReport,
    SourceDrill,
    make_scratch,
    parse_drill_config,
    run_drill,
    write_result_file,
)
from drkit.storage.local import LocalStorage


def metric_outcomes(report: DrillReport) -> list[metrics.Outcome]:
    """Per-source :class:`drkit.metrics.Outcome` values of a drill: ``drill_success``,
    ``drill_rto_seconds`` and ``drill_rpo_seconds`` (the duration is restore + check)."""
    outcomes: list[metrics.Outcome] = []
    for r in report.results:
        values: dict[str, float] = {"drill_success": 1.0 if r.ok else 0.0}
        if r.rto_seconds is not None:
            values["drill_rto_seconds"] = r.rto_seconds
        if r.rpo_seconds is not None:
            values["drill_rpo_seconds"] = r.rpo_seconds
        outcomes.append(metrics.Outcome(r.source, r.ok, (r.rto_seconds or 0) + (r.check_seconds or 0), values))
    return outcomes


def human_table(report: DrillReport, sizes: Callable[[float], str], width: int | None = None) -> list[str]:
    """The report as aligned text lines (one row per source, then the verdict).

    CHECK, the last column, is cut to fit *width* (the terminal's columns; None: never
    cut), keeping at least 20 characters of it."""
    rows = [("SOURCE", "TYPE", "SNAPSHOT", "RPO", "RTO", "RESTORED", "CHECK", "RESULT")]
    for r in report.results:
        rows.append((
            r.source,
            r.source_type,
            r.snapshot.short_id if r.snapshot else "-",
            _duration(r.rpo_seconds),
            _duration(r.rto_seconds),
            sizes(r.bytes_restored) if r.rto_seconds is not None else "-",
            r.check.summary if r.check else "-",
            "ok" if r.ok else f"FAILED ({r.failed_step})",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 2)]
    used = sum(widths) + 2 * len(widths) + 16 + 2
    room = max(20, width - used) if width else None

    def check_cell(text: str) -> str:
        return text if room is None or len(text) <= room else text[: room - 1] + "…"

    lines = ["  ".join(c.ljust(w) for c, w in zip(row[:-2], widths, strict=True)) + f"  {row[-1]:<16}  {check_cell(row[-2])}"
             for row in rows]
    for r in report.failed:
        lines.append(f"{r.source}: {r.failed_step}: {r.error}")
        if r.check:
            lines.extend(f"  {p}" for p in r.check.problems[:5])
    for line in report.damaged:
        lines.append(f"damaged: {line}")
    for note in report.notes:
        lines.append(f"note: {note}")
    verdict = "PASS" if report.ok else "FAIL"
    lines.append(f"drill {verdict}: {len(report.results) - len(report.failed)}/{len(report.results)} source(s) restored and checked")
    return lines


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _publish(run: metrics.Run, report: DrillReport, result_file: Path | None) -> None:
    """Result file (atomic) and per-source metrics (written when the track block ends)."""
    for oc in metric_outcomes(report):
        run.add(oc.source, ok=oc.ok, duration=oc.duration, values=oc.values)
    if result_file is not None:
        write_result_file(result_file, report)


def _terminal_width(state: CliState) -> int | None:
    """$COLUMNS, else the terminal's width; None (never cut) when stdout is not a terminal."""
    cols = state.env.get("COLUMNS")
    if cols and cols.isdigit():
        return int(cols)
    return shutil.get_terminal_size().columns if sys.stdout.isatty() else None


def _show(state: CliState, report: DrillReport, as_json: bool) -> None:
    if as_json:
        state.emit_json(report.to_json())
        return
    for line in human_table(report, human_size, _terminal_width(state)):
        state.say(line)


@cli.command("drill")
@click.option("--snapshot", "snapshot_ref", default="latest", show_default=True, metavar="latest|RUN|ID",
              help="Drill the latest snapshot of each source, or the snapshots of one run, or one snapshot (id prefixes work).")
@click.option("-s", "--source", "sources", multiple=True, metavar="NAME", help="Drill only this source (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (the same document as the result file).")
@click.option("--scratch", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Restore under DIR (default: drill.scratch_dir, else the system temp dir). Needs room for the largest source.")
@click.option("--keep", is_flag=True, help="Keep the restored data (its place is printed).")
@click.option("--result-file", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Also write the JSON report here (default: drill.result_file).")
@click.option("--sandbox", is_flag=True, help="No config needed: make sample sources, back them up into a temp repository, drill them.")
@identity_option
@pass_state
def drill_cmd(state: CliState, snapshot_ref: str, sources: tuple[str, ...], as_json: bool, scratch: Path | None,
              keep: bool, result_file: Path | None, sandbox: bool, identity_path: Path | None) -> None:
    """Prove that the backups restore: restore each source into a scratch place, check it, report RTO/RPO.

    Per source: the RPO (age of the snapshot now), the RTO (time the restore took),
    the bytes restored and a semantic check of the result (files re-hashed against
    the snapshot; SQLite integrity_check and row counts; etcd started on the
    restored data; git fsck and refs; volume image hash and read-only fsck). The
    report goes to the terminal (or --json), to drill.result_file and to the
    metrics textfile (drkit_drill_success, _rto_seconds, _rpo_seconds).

    Exits 6 when a restore or a check fails (damaged or wrong data), 7 when a
    source has no snapshot or its restore is over drill.rto_budget_seconds.

    \b
    Examples:
      drkit drill                          latest snapshot of every source
      drkit drill --snapshot 3f2a9c1e      the snapshots of that backup run
      drkit drill -s k3s-db --json
      drkit drill --sandbox                try it without a cluster or a config
    """
    if sandbox:
        if snapshot_ref != "latest" or sources or result_file:
            raise UsageError("--sandbox makes its own sources: it takes only --json, --keep and --scratch")
        _sandbox(state, as_json=as_json, scratch=scratch, keep=keep)
        return
    cfg = state.config
    drill_cfg = parse_drill_config(cfg.raw.drill)
    repo = open_repository(state, identity_path)
    options = DrillOptions(
        snapshot_ref=snapshot_ref,
        sources=list(sources),
        scratch_root=scratch or drill_cfg.scratch_dir,
        keep=keep,
        rto_budget_seconds=drill_cfg.rto_budget_seconds,
    )
    progress = None if as_json else (lambda name: click.echo(f"drilling {name} ...", err=True) if state.interactive else None)
    with metrics.track(state, "drill") as m:
        report = run_drill(repo, cfg.sources, options, on_start=progress)
        _publish(m, report, result_file or drill_cfg.result_file)
        _show(state, report, as_json)
        err = report.error()
        if err is not None:
            raise err


def _sandbox(state: CliState, *, as_json: bool, scratch: Path | None, keep: bool) -> None:
    from drkit.sandbox import build_sandbox

    say = (lambda text: None) if as_json else state.say
    root = make_scratch(scratch, "drkit-sandbox-")
    box = None
    try:
        say(f"sandbox in {root}")
        box = build_sandbox(root, say=say)
        cfg = load_config(box.config_path, Environment())
        drill_cfg = parse_drill_config(cfg.raw.drill)
        secret = (root / "passphrase").read_text().strip()
        from drkit.redact import register

        register(secret)
        repo = Repository.init(LocalStorage(box.repo_dir), secret, pack_size=cfg.repository.pack_size_mib * 1024 * 1024)
        say(f"backing up {len(cfg.sources)} sources into a new repository ({', '.join(s.describe() for s in cfg.sources)})")
        started = time.monotonic()
        with box.under_load():
            try:
                run = run_backup(repo, cfg.sources, BackupOptions(tags=["sandbox"]))
            except DrkitError as exc:
                partial = exc.outcome if isinstance(exc.outcome, BackupRun) else None
                for o in partial.outcomes if partial else []:
                    if o.error:
                        click.echo(f"backup of {o.source} failed: {o.error.message}", err=True)
                raise
        say(f"backup done in {time.monotonic() - started:.1f}s: " + ", ".join(
            f"{s.source} {human_size(s.stats.get('size', 0))}" for s in run.snapshots))
        box.after_backup()  # live services stop: the drill restores from the repository alone
        say("drilling: restore each source into a scratch directory and check it")
        options = DrillOptions(scratch_root=root, keep=keep, extra_checks=box.checks,
                               rto_budget_seconds=drill_cfg.rto_budget_seconds)
        with metrics.track(cfg, "drill") as m:
            report = run_drill(repo, cfg.sources, options)
            report.notes[:0] = [f"{s.name}: {s.note}" for s in box.samples if s.note] + box.notes
            _publish(m, report, drill_cfg.result_file)
            if as_json:
                state.emit_json(report.to_json())
            else:
                _summary(state, report)
                if keep:
                    state.say(f"kept: {root} (config drkit.yaml, repository repo/, result drill-result.json, metrics drkit.prom)")
            err = report.error()
            if err is not None:
                raise err
    finally:
        if box is not None:
            box.close()
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def _summary(state: CliState, report: DrillReport) -> None:
    """Short per-source lines and the verdict."""
    width = max((len(r.source) for r in report.results), default=6)
    for r in report.results:
        state.say(_line(r, width))
    for note in report.notes:
        state.say(f"note: {note}")
    verdict = "PASS" if report.ok else "FAIL"
    total = sum(r.rto_seconds or 0 for r in report.results)
    state.say(f"sandbox drill {verdict}: {len(report.results) - len(report.failed)}/{len(report.results)} sources restored "
              f"and checked, total RTO {total:.2f}s, {human_size(sum(r.bytes_restored for r in report.results))} restored")


def _line(r: SourceDrill, width: int) -> str:
    rto = f"{r.rto_seconds:.2f}s" if r.rto_seconds is not None else "-"
    rpo = f"{r.rpo_seconds:.1f}s" if r.rpo_seconds is not None else "-"
    head = f"{'PASS' if r.ok else 'FAIL'}  {r.source:<{width}}  RPO {rpo:>6}  RTO {rto:>7}  {human_size(r.bytes_restored):>10}"
    if r.ok and r.check:
        return f"{head}  {r.check.summary}"
    return f"{head}  {r.failed_step}: {r.error}"
