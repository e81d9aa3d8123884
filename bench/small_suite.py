"""The many-small-files suite of ``make bench``: drkit, restic and borg on ~200,000 small files.

Per round, for each tool in turn (interleaved, so background load hits all alike):
``init``; first backup; second backup with nothing changed; third backup after 1% of the
files were rewritten (same size, mtime kept within the same second: a files cache that
trusts whole-second mtimes misses them, and the byte check after restore would catch it);
a full restore of the third snapshot, checked file by file (SHA-256) outside the timing.
The best wall time per phase over the rounds is reported, with CPU time, peak RSS and the
ratios drkit/other. Then drkit's first backup and restore at half and at twice the file
count show whether its peak RSS grows with the number of files (target: within 10%).
"""

from __future__ import annotations

import shutil
import statistics
from pathlib import Path
from typing import Any, Callable

import smallfiles
from tools import TOOLS, Measured, StepFailed, Tool

PHASES = ("backup1", "backup2", "backup3", "restore")
LABELS = {
    "backup1": "first backup",
    "backup2": "unchanged backup",
    "backup3": "1% changed backup",
    "restore": "restore",
}
TARGETS = {"ratio_vs_restic": 0.5, "peak_rss_mib": 200, "rss_growth": 0.10}


def _record(raw: dict[str, Any], tool: str, phase: str, m: Measured, **extra: Any) -> None:
    raw.setdefault(tool, {}).setdefault(phase, []).append(
        {"wall": round(m.wall, 3), "cpu": round(m.cpu, 3), "maxrss_mib": round(m.maxrss_kib / 1024, 1), **extra}
    )


def run_round(no: int, tools: list[Tool], data: Path, doc: dict, raw: dict[str, Any], log: Callable[[str], None]) -> None:
    pristine_tools = list(tools)
    for t in pristine_tools:
        t.reset()
        t.init()
        m, _ = t.backup(f"s{no}-b1")
        _record(raw, t.name, "backup1", m)
        m, _ = t.backup(f"s{no}-b2")
        _record(raw, t.name, "backup2", m)
        log(f"small round {no}: {t.name:6s} first {raw[t.name]['backup1'][-1]['wall']:.2f}s, unchanged {m.wall:.2f}s")
    mutation = smallfiles.mutate(data, doc)
    expected = smallfiles.tree_digest(data)
    for t in tools:
        m, _ = t.backup(f"s{no}-b3")
        _record(raw, t.name, "backup3", m)
    targets = []
    for t in tools:
        target = t.work / "restore"
        targets.append(target)
        m = t.restore(target)
        got = smallfiles.tree_digest(t.restored_root(target))
        ok = got == expected
        _record(raw, t.name, "restore", m, verified=ok)
        log(f"small round {no}: {t.name:6s} 1%-changed backup {raw[t.name]['backup3'][-1]['wall']:.2f}s, restore {m.wall:.2f}s "
            f"({'bytes match' if ok else 'MISMATCH'})")
        if not ok:
            wrong = sorted(k for k in expected if got.get(k) != expected[k])[:3]
            raise StepFailed(f"{t.name} restored wrong data after the 1% change ({mutation['files']} files): {wrong}")
    # Removed only once every tool has restored: on ext4, creating files soon after many
    # were deleted costs several times the system time (the inode allocator passes over
    # recently freed inodes), which would land on whichever tool restores next.
    for target in targets:
        shutil.rmtree(target)
    smallfiles.restore_files(data, doc)


def rss_by_count(counts: list[int], seed: int, data_root: Path, work: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """drkit's peak RSS for a first backup and a restore at each file count."""
    out: dict[str, Any] = {}
    for count in counts:
        data = data_root / f"small-{count}-s{seed}"
        smallfiles.generate(data, seed, count, log=log)
        t = TOOLS["drkit"]("drkit", work / f"rss-{count}", data)
        t.reset()
        t.init()
        b, _ = t.backup("rss")
        r = t.restore(t.work / "restore")
        out[str(count)] = {"backup1_mib": round(b.maxrss_kib / 1024, 1), "restore_mib": round(r.maxrss_kib / 1024, 1),
                           "backup1_wall": round(b.wall, 2), "restore_wall": round(r.wall, 2)}
        log(f"rss check: {count} files: backup peak {b.maxrss_kib / 1024:.0f} MiB, restore peak {r.maxrss_kib / 1024:.0f} MiB")
        shutil.rmtree(t.work, ignore_errors=True)
    return out


def summarize(raw: dict[str, Any], names: list[str], rss: dict[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for name in names:
        summary[name] = {
            phase: {
                "wall_best": min(r["wall"] for r in raw[name][phase]),
                "wall_median": round(statistics.median(r["wall"] for r in raw[name][phase]), 3),
                "cpu_best": min(r["cpu"] for r in raw[name][phase]),
                "maxrss_mib_max": max(r["maxrss_mib"] for r in raw[name][phase]),
            }
            for phase in PHASES
            if raw.get(name, {}).get(phase)
        }
    ratios = {
        other: {
            phase: {
                "wall": round(summary["drkit"][phase]["wall_best"] / summary[other][phase]["wall_best"], 3),
                "cpu": round(summary["drkit"][phase]["cpu_best"] / max(summary[other][phase]["cpu_best"], 1e-6), 3),
            }
            for phase in PHASES
            if phase in summary.get("drkit", {}) and phase in summary[other]
        }
        for other in names
        if other != "drkit" and "drkit" in summary
    }
    summary["ratios_drkit_to"] = ratios
    checks: dict[str, bool] = {}
    if "restic" in ratios:
        for phase in PHASES:
            if phase in ratios["restic"]:
                checks[f"{LABELS[phase]} <= {TARGETS['ratio_vs_restic']}x restic"] = ratios["restic"][phase]["wall"] <= TARGETS["ratio_vs_restic"]
    if "drkit" in summary:
        peak = max(summary["drkit"][p]["maxrss_mib_max"] for p in summary["drkit"])
        summary["drkit_peak_rss_mib"] = peak
        checks[f"peak RSS < {TARGETS['peak_rss_mib']} MiB"] = peak < TARGETS["peak_rss_mib"]
    if len(rss) >= 2:
        for key in ("backup1_mib", "restore_mib"):
            vals = [v[key] for v in rss.values()]
            checks[f"{key.split('_')[0]} peak RSS flat from {min(map(int, rss))} to {max(map(int, rss))} files (within 10%)"] = (
                max(vals) <= (1 + TARGETS["rss_growth"]) * min(vals)
            )
    summary["rss_by_count"] = rss
    summary["checks"] = checks
    return summary


def print_table(summary: dict[str, Any], names: list[str], doc: dict[str, Any], rounds: int) -> None:
    print()
    print(f"many small files: {doc['count']} files ({doc['size'] / 2**20:.0f} MiB) in {doc['directories']} directories; "
          f"best of {rounds} round(s)")
    others = [n for n in names if n != "drkit"]
    print(f"{'phase':20s}" + "".join(f"{n + ' wall/cpu/RSS':>30s}" for n in names) + "".join(f"{'drkit/' + n:>14s}" for n in others))
    for phase in PHASES:
        row = f"{LABELS[phase]:20s}"
        for n in names:
            p = summary[n].get(phase)
            row += f"{p['wall_best']:>10.2f}s/{p['cpu_best']:>6.2f}s/{p['maxrss_mib_max']:>5.0f}MiB " if p else f"{'-':>30s}"
        for n in others:
            r = summary["ratios_drkit_to"].get(n, {}).get(phase)
            row += f"{r['wall']:>13.2f}x" if r else f"{'-':>14s}"
        print(row)
    for count, v in summary["rss_by_count"].items():
        print(f"drkit at {count} files: backup peak {v['backup1_mib']} MiB ({v['backup1_wall']}s), restore peak {v['restore_mib']} MiB ({v['restore_wall']}s)")
    for name, ok in summary["checks"].items():
        print(f"  [{'PASS' if ok else 'MISS'}] {name}")


def run(names: list[str], count: int, seed: int, rounds: int, data_root: Path, work: Path, log: Callable[[str], None],
        rss_counts: list[int]) -> dict[str, Any]:
    data = data_root / f"small-{count}-s{seed}"
    doc = smallfiles.generate(data, seed, count, log=log)
    smallfiles.tree_digest(data)  # warm the page cache for every tool alike
    tools = [TOOLS[n](n, work / f"small-{n}", data) for n in names]
    raw: dict[str, Any] = {}
    for no in range(1, rounds + 1):
        run_round(no, tools, data, doc, raw, log)
    for t in tools:
        shutil.rmtree(t.work, ignore_errors=True)
    rss = rss_by_count(rss_counts, seed, data_root, work, log) if "drkit" in names and rss_counts else {}
    summary = summarize(raw, names, rss)
    print_table(summary, names, doc, rounds)
    return {"count": count, "size": doc["size"], "directories": doc["directories"], "rounds": rounds, "raw": raw, "summary": summary}
