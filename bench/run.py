"""drkit benchmark: drkit vs restic vs borg on the same generated data, same run.

    make bench                                   # 1 GiB, 3 rounds, RSS scaling check, remotes
    make bench BENCH_ARGS="--size 256M --rounds 1 --no-rss-scaling --no-remote"   # quick
    python bench/run.py --remote-only            # only S3 (moto) and SFTP (loopback sshd)
    python bench/run.py --report bench/out/results.json   # re-print an earlier run

Per round, for each tool in turn: init, first backup; then about 1% of the bytes are
overwritten in a few files; each tool's second backup; each tool's full restore of
the second snapshot (checked byte for byte against the data, outside the timing).
Tools are interleaved within a round so that background load hits all of them alike;
the figure reported per phase is the best (minimum) wall time over the rounds, and the
CPU time (user+sys of that process) is shown next to it. Before timing, every data file
is read once (its SHA-256 is taken), so all tools start from a warm page cache.

drkit's peak RSS comes from ``os.wait4`` on each drkit process; whether it grows with
the data size is checked by a first backup of a smaller set (default 256 MiB).

Writes ``bench/out/results.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import dataset
from tools import TOOLS, Measured, StepFailed, Tool, dir_bytes

PHASES = ("init", "backup1", "backup2", "restore")
TARGETS = {
    "backup1_vs_restic": 0.5,
    "restore_vs_restic": 0.7,
    "peak_rss_mib": 200,
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_start": os.getloadavg(),
    }


def _record(results: dict[str, Any], tool: str, phase: str, m: Measured, **extra: Any) -> None:
    results.setdefault(tool, {}).setdefault(phase, []).append(
        {"wall": round(m.wall, 3), "cpu": round(m.cpu, 3), "maxrss_mib": round(m.maxrss_kib / 1024, 1), **extra}
    )


def run_round(no: int, tools: list[Tool], data: Path, doc: dict, out: dict[str, Any], expected_after: dict[str, str] | None) -> dict[str, str]:
    """One round: init + backup1 for each tool, mutate, backup2 each, restore each."""
    raw = out["raw"]
    for t in tools:
        t.reset()
        m = t.init()
        _record(raw, t.name, "init", m)
        m, info = t.backup(f"r{no}-b1")
        _record(raw, t.name, "backup1", m, repo_bytes=dir_bytes(t.repo), **info)
        log(f"round {no}: {t.name:6s} init {raw[t.name]['init'][-1]['wall']:.2f}s, first backup {m.wall:.2f}s (cpu {m.cpu:.2f}s)")
    mutation = dataset.mutate(data, doc)
    out["mutation"] = mutation
    expected = expected_after or dataset.tree_digest(data)
    for t in tools:
        before = dir_bytes(t.repo)
        m, info = t.backup(f"r{no}-b2")
        _record(raw, t.name, "backup2", m, repo_growth=dir_bytes(t.repo) - before, **info)
        log(f"round {no}: {t.name:6s} second backup {m.wall:.2f}s, added {info}")
    for t in tools:
        target = t.work / "restore"
        m = t.restore(target)
        got = dataset.tree_digest(t.restored_root(target))
        ok = got == expected
        _record(raw, t.name, "restore", m, verified=ok)
        log(f"round {no}: {t.name:6s} restore {m.wall:.2f}s ({'bytes match' if ok else 'MISMATCH'})")
        if not ok:
            missing = sorted(set(expected) - set(got))[:3]
            wrong = sorted(k for k in expected if k in got and got[k] != expected[k])[:3]
            raise StepFailed(f"{t.name} restored wrong data: missing {missing}, different {wrong}")
        shutil.rmtree(target)
    dataset.restore_files(data, doc)
    return expected


def rss_scaling(size: int, seed: int, data_root: Path, work: Path, rounds: int, out: dict[str, Any]) -> None:
    """drkit's first backup of a smaller set: its peak RSS, to compare."""
    small = data_root / f"set-{dataset.human(size).replace(' ', '')}-s{seed}"
    doc = dataset.generate(small, seed, size, log=log)
    dataset.tree_digest(small)  # warm
    t = TOOLS["drkit"]("drkit", work / "rss-drkit", small)
    for _ in range(rounds):
        t.reset()
        t.init()
        m, _ = t.backup("rss")
        out["rss_scaling"].setdefault("small", []).append(round(m.maxrss_kib / 1024, 1))
        log(f"rss check: drkit first backup of {dataset.human(doc['size'])}: {m.wall:.2f}s, peak RSS {m.maxrss_kib / 1024:.0f} MiB")
    shutil.rmtree(t.work, ignore_errors=True)


def summarize(out: dict[str, Any], tool_names: list[str]) -> dict[str, Any]:
    raw = out["raw"]
    summary: dict[str, Any] = {}
    for name in tool_names:
        s: dict[str, Any] = {}
        for phase in PHASES:
            runs = raw.get(name, {}).get(phase, [])
            if not runs:
                continue
            best = min(runs, key=lambda r: r["wall"])
            s[phase] = {
                "wall_best": best["wall"],
                "wall_median": round(statistics.median(r["wall"] for r in runs), 3),
                "cpu_best": min(r["cpu"] for r in runs),
                "maxrss_mib_max": max(r["maxrss_mib"] for r in runs),
            }
        # Byte counts vary a little per round (each new repository has a new random
        # chunker seed / polynomial): report the mean over rounds.
        def mean(phase: str, key: str, name: str = name) -> int | None:
            vals = [r.get(key) for r in raw[name][phase]]
            return None if any(v is None for v in vals) else int(statistics.mean(vals))

        s["repo_bytes_after_backup1"] = mean("backup1", "repo_bytes")
        s["backup2_bytes_added_raw"] = mean("backup2", "bytes_added_raw")
        s["backup2_bytes_added_stored"] = mean("backup2", "bytes_added_stored")
        s["backup2_repo_growth"] = mean("backup2", "repo_growth")
        summary[name] = s
    ratios: dict[str, Any] = {}
    if "drkit" in summary:
        for other in (n for n in tool_names if n != "drkit"):
            ratios[other] = {
                phase: {
                    "wall": round(summary["drkit"][phase]["wall_best"] / summary[other][phase]["wall_best"], 3),
                    "cpu": round(summary["drkit"][phase]["cpu_best"] / max(summary[other][phase]["cpu_best"], 1e-6), 3),
                }
                for phase in PHASES
                if phase in summary["drkit"] and phase in summary.get(other, {})
            }
    summary["ratios_drkit_to"] = ratios
    # Peak RSS of drkit over every backup/restore at the full size, and the scaling check.
    d = raw.get("drkit", {})
    peak = max((r["maxrss_mib"] for p in PHASES for r in d.get(p, [])), default=None)
    summary["drkit_peak_rss_mib"] = peak
    small = out.get("rss_scaling", {}).get("small")
    if small:
        big = max(r["maxrss_mib"] for r in d.get("backup1", []))
        summary["rss_scaling"] = {
            "small_size": out["rss_scaling"]["small_size"],
            "small_backup1_peak_mib": max(small),
            "full_size": out["size"],
            "full_backup1_peak_mib": big,
            "growth_mib": round(big - max(small), 1),
        }
    checks: dict[str, Any] = {}
    if "restic" in ratios:
        checks["backup1 <= 0.5x restic"] = ratios["restic"]["backup1"]["wall"] <= TARGETS["backup1_vs_restic"]
        checks["restore <= 0.7x restic"] = ratios["restic"]["restore"]["wall"] <= TARGETS["restore_vs_restic"]
        checks["backup2 adds <= restic (raw bytes)"] = summary["drkit"]["backup2_bytes_added_raw"] <= summary["restic"]["backup2_bytes_added_raw"]
    if peak is not None:
        checks["peak RSS < 200 MiB"] = peak < TARGETS["peak_rss_mib"]
    if "rss_scaling" in summary:
        sc = summary["rss_scaling"]
        checks["peak RSS flat with size (growth <= 10%)"] = sc["growth_mib"] <= 0.10 * sc["small_backup1_peak_mib"]
    summary["checks"] = checks
    return summary


def print_table(summary: dict[str, Any], tool_names: list[str], out: dict[str, Any]) -> None:
    print()
    print(f"data: {dataset.human(out['size'])}, {out['files']} files ({out['random_share']:.0%} incompressible); "
          f"second backup after {dataset.human(out['mutation']['bytes'])} overwritten in {len(out['mutation']['files'])} files; "
          f"best of {out['rounds']} round(s)")
    head = f"{'phase':12s}" + "".join(f"{n + ' wall/cpu':>24s}" for n in tool_names)
    others = [n for n in tool_names if n != "drkit"]
    head += "".join(f"{'drkit/' + n:>16s}" for n in others)
    print(head)
    for phase in PHASES:
        row = f"{phase:12s}"
        for n in tool_names:
            p = summary[n].get(phase)
            row += f"{p['wall_best']:>14.2f}s/{p['cpu_best']:>6.2f}s  " if p else f"{'-':>24s}"
        for n in others:
            r = summary["ratios_drkit_to"].get(n, {}).get(phase)
            row += f"{r['wall']:>15.2f}x" if r else f"{'-':>16s}"
        print(row)
    for phase in PHASES:  # the same ratios in CPU time (user+sys), less sensitive to load
        cells = [summary["ratios_drkit_to"].get(n, {}).get(phase) for n in others]
        label = f"{phase} cpu"
        print(f"{label:12s}" + " " * (24 * len(tool_names)) + "".join(f"{c['cpu']:>15.2f}x" if c else f"{'-':>16s}" for c in cells))
    print()
    print(f"{'':22s}" + "".join(f"{n:>16s}" for n in tool_names))
    for key, label in (
        ("repo_bytes_after_backup1", "repo after backup 1"),
        ("backup2_bytes_added_raw", "backup 2 added (raw)*"),
        ("backup2_bytes_added_stored", "backup 2 added (stored)*"),
        ("backup2_repo_growth", "backup 2 repo growth*"),
    ):
        vals = [summary[n].get(key) for n in tool_names]
        print(f"{label:22s}" + "".join(f"{dataset.human(v) if v is not None else 'n/a':>16s}" for v in vals))
    print(f"{'':22s}(* mean over rounds)")
    peak_row = "".join(f"{summary[n]['backup1']['maxrss_mib_max']:>12.0f} MiB" for n in tool_names)
    print(f"{'peak RSS (backup 1)':22s}" + peak_row)
    print()
    print(f"drkit peak RSS over all steps: {summary['drkit_peak_rss_mib']} MiB")
    if "rss_scaling" in summary:
        sc = summary["rss_scaling"]
        print(
            f"drkit first-backup peak RSS: {sc['small_backup1_peak_mib']} MiB at {dataset.human(sc['small_size'])}, "
            f"{sc['full_backup1_peak_mib']} MiB at {dataset.human(sc['full_size'])} (growth {sc['growth_mib']} MiB)"
        )
    for name, ok in summary["checks"].items():
        print(f"  [{'PASS' if ok else 'MISS'}] {name}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1G", help="data set size (e.g. 256M, 1G; default 1G)")
    ap.add_argument("--seed", type=int, default=1, help="data set seed (default 1)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; the best wall time per phase is reported (default 3)")
    ap.add_argument("--tools", default="drkit,restic,borg", help="comma-separated subset of drkit,drkit-z3,restic,borg (drkit-z3: drkit at zstd level 3)")
    ap.add_argument("--rss-size", default="256M", help="smaller size for the peak-RSS scaling check (default 256M)")
    ap.add_argument("--no-rss-scaling", action="store_true", help="skip the peak-RSS scaling check")
    ap.add_argument("--no-remote", action="store_true", help="skip the remote benchmark (S3 via moto's server, SFTP via a loopback sshd)")
    ap.add_argument("--remote-only", action="store_true", help="run only the remote benchmark")
    ap.add_argument("--remotes", default="s3,sftp", help="comma-separated subset of s3,sftp for the remote benchmark (default both)")
    ap.add_argument("--suite", default="large,small", help="comma-separated: large (the 1 GiB mixed set), small (many small files); default both")
    ap.add_argument("--small-files", type=int, default=200_000, help="files in the many-small-files set (default 200000)")
    ap.add_argument("--small-rss-counts", default="100000,400000", help="file counts for drkit's peak-RSS flatness check on small files ('' to skip)")
    ap.add_argument("--report", type=Path, metavar="RESULTS_JSON", help="only re-print the tables of an earlier results.json")
    ap.add_argument("--data-dir", type=Path, default=HERE / "data")
    ap.add_argument("--out-dir", type=Path, default=HERE / "out")
    args = ap.parse_args(argv)

    if args.report:
        old = json.loads(args.report.read_text())
        if old.get("raw"):
            tool_names = list(old["raw"])
            old["summary"] = summarize(old, tool_names)
            print_table(old["summary"], tool_names, old)
        if old.get("small"):
            import small_suite

            sm = old["small"]
            small_suite.print_table(sm["summary"], list(sm["raw"]), {"count": sm["count"], "size": sm["size"], "directories": sm["directories"]}, sm["rounds"])
        if old.get("remote"):
            import remote

            remote.print_table(old["remote"])
        return 0
    size = dataset.parse_size(args.size)
    names = [n.strip() for n in args.tools.split(",") if n.strip()]
    for n in names:
        if n not in TOOLS:
            ap.error(f"unknown tool {n!r} (choose from {', '.join(TOOLS)})")
        if not n.startswith("drkit") and shutil.which(n) is None:
            ap.error(f"{n} is not installed: run scripts/install-system-deps.sh (Debian packages restic, borgbackup)")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    work = args.out_dir / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    data = args.data_dir / f"set-{dataset.human(size).replace(' ', '')}-s{args.seed}"
    log(f"data set {data} ({dataset.human(size)}, seed {args.seed})")
    doc = dataset.generate(data, args.seed, size, log=log)
    out: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "size": doc["size"],
        "seed": args.seed,
        "files": len(doc["files"]),
        "random_share": doc["random_bytes"] / doc["size"],
        "rounds": args.rounds,
        "settings": {
            "drkit": "compression auto (zstd level from drkit.config), passphrase key slot (scrypt), local dir",
            "restic": "repository v2, --compression auto (default), passphrase",
            "borg": "init --encryption repokey-blake2, create --compression zstd,3",
            "warmup": "every data file read once (SHA-256) before timing; page cache stays warm",
        },
        "raw": {},
        "rss_scaling": {"small_size": dataset.parse_size(args.rss_size)},
    }
    results_path = args.out_dir / "results.json"
    suites = {s.strip() for s in args.suite.split(",") if s.strip()}
    if not suites <= {"large", "small"}:
        ap.error(f"unknown suite in {args.suite!r} (choose from large, small)")
    if "small" in suites and not args.remote_only:
        import small_suite

        counts = [int(c) for c in args.small_rss_counts.split(",") if c.strip()]
        out["small"] = small_suite.run(names, args.small_files, args.seed, args.rounds, args.data_dir, work, log, counts)
        results_path.write_text(json.dumps(out, indent=1))
    if "large" in suites and not args.remote_only:
        tools = [TOOLS[n](n, work / n, data) for n in names]
        for t in tools:
            t.reset()
        out["versions"] = {t.name: t.version() for t in tools}
        log("warming the page cache (reading every file once)")
        pristine = dataset.tree_digest(data)
        if len(pristine) != len(doc["files"]):
            raise SystemExit(f"data set {data} does not match its manifest; delete it and re-run")
        expected = None
        for no in range(1, args.rounds + 1):
            expected = run_round(no, tools, data, doc, out, expected)
        if not args.no_rss_scaling and "drkit" in names and out["rss_scaling"]["small_size"] < size:
            rss_scaling(out["rss_scaling"]["small_size"], args.seed, args.data_dir, work, args.rounds, out)
        out["machine"]["loadavg_end"] = os.getloadavg()
        out["summary"] = summarize(out, names)
        results_path.write_text(json.dumps(out, indent=1))
        print_table(out["summary"], names, out)
    if not args.no_remote or args.remote_only:
        import remote

        remotes = tuple(r.strip() for r in args.remotes.split(",") if r.strip())
        if not set(remotes) <= {"s3", "sftp"}:
            ap.error(f"unknown remote in {args.remotes!r} (choose from s3, sftp)")
        small = None
        if "small" in suites:
            import smallfiles

            small = args.data_dir / f"small-{args.small_files}-s{args.seed}"
            smallfiles.generate(small, args.seed, args.small_files, log=log)
        out["remote"] = remote.run(data, work / "remote", log=log, remotes=remotes, small=small)
        results_path.write_text(json.dumps(out, indent=1))
        remote.print_table(out["remote"])
    log(f"results written to {results_path}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
