"""Remote throughput: drkit backing up to and restoring from S3 (moto's server) and SFTP
(loopback sshd), next to a raw transfer of the same stored bytes.

For each remote, drkit's first backup of the data set is timed (the whole process:
start-up, key derivation, reading, chunking, compression, encryption, verification and
upload). Then the objects that backup stored are listed, and a raw transfer of objects
of exactly those sizes is timed in a child process of its own:

- S3: boto3's managed multipart upload (``upload_fileobj``, 8 MiB parts, 4 threads),
  one object after another;
- SFTP: paramiko, one connection, ``putfo`` with pipelined writes, then fsync like drkit.

Then drkit restores that snapshot from the remote (``drkit restore latest --target``
into a fresh directory, timed as a whole process: start-up, key derivation, index,
reading packs, decryption, verification, decompression, writing, the final sync), and
the restored tree is compared file by file (SHA-256) with the data set, outside the
timing: a wrong restore is reported as such, never as a time. Against it, a raw
download of the same stored bytes (every pack object that backup stored, whole, into
memory; nothing written) is timed in a child process, with the parallelism a
hand-written tool would use and drkit's restore has (4 workers):

- S3: boto3 ``get_object`` of whole objects, 4 threads;
- SFTP: paramiko, one connection, 4 SFTP sessions in 4 threads, each object read whole
  with ``readv`` in requests of the length the server's ``limits@openssh.com`` states
  (255 KiB from OpenSSH; paramiko's own ``getfo`` sends 32 KiB requests and varied from
  3.5 to 11 s for the same 744 MiB here, too noisy to compare with).

With the many-small-files suite (``--suite`` includes ``small``, the default), SFTP
also runs that set against restic on one sshd (:func:`bench_sftp_small`): backup and
restore, drkit's seconds / restic's.

drkit's throughput ratio = raw seconds / drkit seconds, for the same bytes moved (backup
targets in TARGETS; the restore has none yet). The servers are test servers, started
here on 127.0.0.1 and stopped after: moto's ``ThreadedMotoServer`` (in this process; real HTTP) and an OpenSSH ``sshd`` with
its own config and keys (``tests/servers/sshd.py``). Both sides of each transfer run on
the same two cores, so these figures measure the client's overhead against a real
protocol stack, not network speed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from dataset import tree_digest
from tools import PASSPHRASE, StepFailed, _base_env, run_measured

TARGETS = {"s3": 0.8, "sftp": 0.9}
"""Throughput ratio drkit / raw to meet, per remote (issue #18: SFTP >= 0.9x)."""
RSS_LIMIT_MIB = 200
RAW_THREADS = 4
"""Threads (and SFTP sessions) of the raw download: as many as drkit's restore workers."""


def _drkit_env() -> dict[str, str]:
    env = _base_env() | {"DRKIT_PASSWORD": PASSPHRASE}
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _write_config(path: Path, url: str, section: str, options: dict[str, Any], data: Path) -> None:
    import yaml

    doc = {
        "repository": {"url": url, "compression": "auto", section: options},
        "sources": [{"name": "data", "type": "files", "paths": [str(data)]}],
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    path.chmod(0o600)


def _drkit(config: Path, *args: str) -> Any:
    # State and cache beside the config (a fresh work directory per run), never /var/lib
    # or /var/cache.
    env = _drkit_env() | {"DRKIT_STATE_DIR": str(config.parent / "state"), "DRKIT_CACHE_DIR": str(config.parent / "cache")}
    return run_measured([sys.executable, "-m", "drkit", "-c", str(config), *args], env=env, timeout=3600)


def _raw(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run the raw transfer *kind* (s3, sftp, s3-get, sftp-get) in a child process;
    return its own timing (JSON)."""
    spec_file = Path(tempfile.mkstemp(prefix="bench-raw-", suffix=".json")[1])
    spec_file.write_text(json.dumps(spec))
    try:
        m = run_measured([sys.executable, str(Path(__file__)), "--raw", kind, str(spec_file)], env=_drkit_env(), timeout=3600)
    finally:
        spec_file.unlink(missing_ok=True)
    out = json.loads(m.stdout)
    out["process_wall"] = round(m.wall, 3)
    out["cpu"] = round(m.cpu, 3)
    out["peak_rss_mib"] = round(m.maxrss_kib / 1024, 1)
    return out


def _result(kind: str, name: str, drkit_m: Any, sizes: list[int], raw: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    stored = sum(sizes)
    ratio = raw["seconds"] / drkit_m.wall
    return {
        "remote": name,
        "target": TARGETS[kind],
        "objects": len(sizes),
        "stored_bytes": stored,
        "drkit_seconds": round(drkit_m.wall, 3),
        "drkit_cpu": round(drkit_m.cpu, 3),
        "drkit_peak_rss_mib": round(drkit_m.maxrss_kib / 1024, 1),
        "drkit_mib_s": round(stored / drkit_m.wall / 2**20, 1),
        "raw_seconds": raw["seconds"],
        "raw_mib_s": round(stored / raw["seconds"] / 2**20, 1),
        "raw_method": raw["method"],
        "raw_cpu": raw["cpu"],
        "raw_peak_rss_mib": raw["peak_rss_mib"],
        "throughput_ratio": round(ratio, 3),
        "meets_target": ratio >= TARGETS[kind],
        "rss_ok": drkit_m.maxrss_kib / 1024 < RSS_LIMIT_MIB,
        **info,
    }


def _restore(config: Path, work: Path, data: Path, expected: dict[str, str]) -> tuple[Any, str | None]:
    """drkit's restore of the latest snapshot into a fresh directory, timed; then the
    restored tree compared with *expected* (SHA-256 by relative path), untimed.
    Returns the measurement and None, or a description of what is wrong."""
    target = work / "restored"
    shutil.rmtree(target, ignore_errors=True)
    try:
        m = _drkit(config, "restore", "latest", "--source", "data", "--target", str(target))
        got = tree_digest(target / str(data).lstrip("/"))
    finally:
        shutil.rmtree(target, ignore_errors=True)
    if got == expected:
        return m, None
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    differ = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])
    return m, f"restored tree differs: {len(missing)} missing, {len(extra)} extra, {len(differ)} with other bytes (e.g. {(missing + extra + differ)[:3]})"


def _restore_result(drkit_m: Any, sizes: list[int], raw: dict[str, Any], wrong: str | None) -> dict[str, Any]:
    stored = sum(sizes)
    out: dict[str, Any] = {
        "packs": len(sizes),
        "pack_bytes": stored,
        "drkit_seconds": round(drkit_m.wall, 3),
        "drkit_cpu": round(drkit_m.cpu, 3),
        "drkit_peak_rss_mib": round(drkit_m.maxrss_kib / 1024, 1),
        "raw_seconds": raw["seconds"],
        "raw_mib_s": round(stored / raw["seconds"] / 2**20, 1),
        "raw_method": raw["method"],
        "raw_cpu": raw["cpu"],
        "raw_peak_rss_mib": raw["peak_rss_mib"],
        "rss_ok": drkit_m.maxrss_kib / 1024 < RSS_LIMIT_MIB,
        "exact": wrong is None,
    }
    if wrong is not None:
        out["error"] = wrong  # no speed for a wrong restore
    else:
        out["drkit_mib_s"] = round(stored / drkit_m.wall / 2**20, 1)
        out["throughput_ratio"] = round(raw["seconds"] / drkit_m.wall, 3)
    return out


def bench_s3(data: Path, work: Path, log: Callable[[str], None], expected: dict[str, str]) -> dict[str, Any]:
    from tests.servers.s3 import start_moto

    moto = start_moto()
    try:
        s3 = moto.client()
        bucket = moto.new_bucket("bench")
        config = work / "drkit-s3.yaml"
        _write_config(config, f"s3://{bucket}/repo", "s3", moto.options(), data)
        _drkit(config, "init")
        before = {o["Key"] for o in _list_s3(s3, bucket)}
        m = _drkit(config, "backup", "--json")
        sizes = [o["Size"] for o in _list_s3(s3, bucket) if o["Key"] not in before]
        log(f"remote s3: drkit backup {m.wall:.2f}s, {len(sizes)} objects, {sum(sizes) / 2**20:.1f} MiB stored")
        raw_bucket = moto.new_bucket("raw")
        raw = _raw("s3", {"endpoint": moto.endpoint_url, "bucket": raw_bucket, "sizes": sizes, "options": moto.options()})
        log(f"remote s3: raw boto3 multipart {raw['seconds']:.2f}s")
        out = _result("s3", "s3 (moto server)", m, sizes, raw, {"drkit_json": json.loads(m.stdout)["snapshots"][0].get("bytes_stored")})
        packs = {o["Key"]: o["Size"] for o in _list_s3(s3, bucket) if o["Key"].startswith("repo/data/")}
        rm, wrong = _restore(config, work, data, expected)
        log(f"remote s3: drkit restore {rm.wall:.2f}s ({'exact' if wrong is None else wrong})")
        raw_get = _raw("s3-get", {"endpoint": moto.endpoint_url, "bucket": bucket, "keys": sorted(packs), "size": sum(packs.values()), "options": moto.options()})
        log(f"remote s3: raw boto3 get_object {raw_get['seconds']:.2f}s")
        out["restore"] = _restore_result(rm, list(packs.values()), raw_get, wrong)
        return out
    finally:
        moto.stop()


def _list_s3(s3: Any, bucket: str) -> list[dict[str, Any]]:
    out = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        out.extend(page.get("Contents", []))
    return out


def bench_sftp(data: Path, work: Path, log: Callable[[str], None], expected: dict[str, str]) -> dict[str, Any]:
    from tests.servers.sshd import start_sshd

    server = start_sshd(work / "sshd-root")
    try:
        repo_dir = server.sftp_home / "repo"
        config = work / "drkit-sftp.yaml"
        _write_config(
            config,
            server.url(str(repo_dir)),
            "sftp",
            {"key_file": str(server.key_file), "known_hosts_file": str(server.known_hosts_file), "allow_agent": False},
            data,
        )
        _drkit(config, "init")
        before = _list_dir(repo_dir)
        m = _drkit(config, "backup", "--json")
        after = _list_dir(repo_dir)
        sizes = [size for path, size in after.items() if path not in before]
        log(f"remote sftp: drkit backup {m.wall:.2f}s, {len(sizes)} objects, {sum(sizes) / 2**20:.1f} MiB stored")
        login = {
            "host": server.host,
            "port": server.port,
            "user": server.user,
            "key_file": str(server.key_file),
            "known_hosts_file": str(server.known_hosts_file),
        }
        raw = _raw("sftp", {**login, "dir": str(server.sftp_home / "raw"), "sizes": sizes})
        log(f"remote sftp: raw paramiko pipelined {raw['seconds']:.2f}s")
        out = _result("sftp", "sftp (loopback OpenSSH)", m, sizes, raw, {})
        packs = _list_dir(repo_dir / "data")
        rm, wrong = _restore(config, work, data, expected)
        log(f"remote sftp: drkit restore {rm.wall:.2f}s ({'exact' if wrong is None else wrong})")
        raw_get = _raw("sftp-get", {**login, "paths": sorted(packs), "size": sum(packs.values())})
        log(f"remote sftp: raw paramiko getfo {raw_get['seconds']:.2f}s")
        out["restore"] = _restore_result(rm, list(packs.values()), raw_get, wrong)
        return out
    finally:
        server.stop()


def bench_sftp_small(data: Path, work: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Many small files over SFTP (issue #18), against restic on the same sshd: each
    tool backs *data* up into a repository of its own there and restores it into a
    fresh directory (whole processes timed: start-up, key derivation, index, transfer,
    writing). Every restored tree is compared with *data* (SHA-256 by relative path),
    untimed. restic talks to the sshd through ``ssh -s sftp`` with the same key and
    known_hosts (its ``sftp.command``); drkit through paramiko, one connection."""
    from tests.servers.sshd import start_sshd

    expected = tree_digest(data)
    server = start_sshd(work / "sshd-small")
    try:
        config = work / "drkit-sftp-small.yaml"
        _write_config(
            config,
            server.url(str(server.sftp_home / "small-drkit")),
            "sftp",
            {"key_file": str(server.key_file), "known_hosts_file": str(server.known_hosts_file), "allow_agent": False},
            data,
        )
        _drkit(config, "init")
        backup = _drkit(config, "backup", "--json")
        log(f"remote sftp, {len(expected)} small files: drkit backup {backup.wall:.2f}s")
        restore, wrong = _restore(config, work, data, expected)
        log(f"remote sftp, {len(expected)} small files: drkit restore {restore.wall:.2f}s ({wrong or 'exact'})")
        ssh = (f"ssh -i {server.key_file} -p {server.port} -o UserKnownHostsFile={server.known_hosts_file} "
               f"-o IdentitiesOnly=yes -o BatchMode=yes {server.user}@{server.host} -s sftp")
        env = _base_env() | {"RESTIC_PASSWORD": PASSPHRASE, "RESTIC_CACHE_DIR": str(work / "restic-cache"),
                             "RESTIC_REPOSITORY": f"sftp:{server.user}@{server.host}:{server.sftp_home / 'small-restic'}"}
        restic = ["restic", "-o", f"sftp.command={ssh}"]
        run_measured([*restic, "init", "--quiet"], env=env)
        r_backup = run_measured([*restic, "backup", "--quiet", str(data)], env=env)
        log(f"remote sftp, {len(expected)} small files: restic backup {r_backup.wall:.2f}s")
        target = work / "restic-restored"
        try:
            r_restore = run_measured([*restic, "restore", "--quiet", "latest", "--target", str(target)], env=env)
            r_wrong = None if tree_digest(target / str(data).lstrip("/")) == expected else "restic's restored tree differs"
        finally:
            shutil.rmtree(target, ignore_errors=True)
        log(f"remote sftp, {len(expected)} small files: restic restore {r_restore.wall:.2f}s ({r_wrong or 'exact'})")
    finally:
        server.stop()
    out: dict[str, Any] = {
        "remote": f"sftp, {len(expected)} small files",
        "files": len(expected),
        "drkit_backup_seconds": round(backup.wall, 3),
        "restic_backup_seconds": round(r_backup.wall, 3),
        "backup_ratio": round(backup.wall / r_backup.wall, 3),
        "drkit_backup_rss_mib": round(backup.maxrss_kib / 1024, 1),
        "drkit_restore_seconds": round(restore.wall, 3),
        "restic_restore_seconds": round(r_restore.wall, 3),
        "restore_ratio": round(restore.wall / r_restore.wall, 3),
        "drkit_restore_rss_mib": round(restore.maxrss_kib / 1024, 1),
    }
    if wrong or r_wrong:
        out["error"] = "; ".join(w for w in (wrong, r_wrong) if w)
    return out


def _list_dir(root: Path) -> dict[str, int]:
    out = {}
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            out[p] = os.path.getsize(p)
    return out


def run(data: Path, work: Path, log: Callable[[str], None] = print, remotes: tuple[str, ...] = ("s3", "sftp"),
        small: Path | None = None) -> dict[str, Any]:
    """The *remotes* (both by default), and with SFTP the many-small-files set *small*
    against restic (when given); a remote whose server cannot start is reported, not fatal."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    expected = tree_digest(data)  # what every restore must give back
    results: dict[str, Any] = {}
    for name, fn in (("s3", bench_s3), ("sftp", bench_sftp)):
        if name not in remotes:
            continue
        try:
            results[name] = fn(data, work, log, expected)
        except (StepFailed, RuntimeError, FileNotFoundError, OSError) as exc:
            log(f"remote {name}: skipped: {exc}")
            results[name] = {"remote": name, "error": str(exc)}
    if small is not None and "sftp" in remotes:
        try:
            results["sftp-small"] = bench_sftp_small(small, work, log)
        except (StepFailed, RuntimeError, FileNotFoundError, OSError) as exc:
            log(f"remote sftp, small files: skipped: {exc}")
            results["sftp-small"] = {"remote": "sftp, small files", "error": str(exc)}
    shutil.rmtree(work, ignore_errors=True)
    return results


def print_table(results: dict[str, Any]) -> None:
    print()
    print(f"{'remote':26s}{'stored':>11s}{'drkit':>10s}{'raw':>10s}{'drkit MiB/s':>13s}{'raw MiB/s':>11s}{'ratio':>8s}{'drkit RSS':>11s}  target (ratio, RSS < {RSS_LIMIT_MIB} MiB)")
    for r in results.values():
        if "error" in r:
            print(f"{r['remote']:26s}  not run: {r['error']}")
            continue
        if "files" in r:
            continue  # the small-files comparison: its own table below
        print(
            f"{r['remote']:26s}{r['stored_bytes'] / 2**20:>8.1f}MiB{r['drkit_seconds']:>9.2f}s{r['raw_seconds']:>9.2f}s"
            f"{r['drkit_mib_s']:>13.1f}{r['raw_mib_s']:>11.1f}{r['throughput_ratio']:>7.2f}x{r['drkit_peak_rss_mib']:>7.0f} MiB"
            f"  >= {r.get('target', 0.8)}x [{'PASS' if r['meets_target'] else 'MISS'}]"
            + (f" RSS [{'PASS' if r['rss_ok'] else 'MISS'}]" if "rss_ok" in r else "")
        )
        if r.get("raw_method"):
            print(f"{'':26s}raw: {r['raw_method']}")
        rr = r.get("restore")
        if not rr:
            continue
        name = "  restore from it"
        if "error" in rr:
            print(f"{name:26s}{rr['pack_bytes'] / 2**20:>8.1f}MiB{rr['drkit_seconds']:>9.2f}s{rr['raw_seconds']:>9.2f}s  WRONG: {rr['error']}")
        else:
            print(
                f"{name:26s}{rr['pack_bytes'] / 2**20:>8.1f}MiB{rr['drkit_seconds']:>9.2f}s{rr['raw_seconds']:>9.2f}s"
                f"{rr['drkit_mib_s']:>13.1f}{rr['raw_mib_s']:>11.1f}{rr['throughput_ratio']:>7.2f}x{rr['drkit_peak_rss_mib']:>7.0f} MiB"
                f"  restored tree exact; RSS [{'PASS' if rr['rss_ok'] else 'MISS'}]"
            )
        print(f"{'':26s}raw: {rr['raw_method']}")
    small = results.get("sftp-small")
    if small and "error" not in small:
        print(f"\n{small['remote']}: drkit / restic wall time (both through the same loopback sshd)")
        for phase in ("backup", "restore"):
            print(f"  {phase:8s} drkit {small[f'drkit_{phase}_seconds']:6.2f}s  restic {small[f'restic_{phase}_seconds']:6.2f}s"
                  f"  ratio {small[f'{phase}_ratio']:.2f}x  drkit peak RSS {small[f'drkit_{phase}_rss_mib']:.0f} MiB")


# -- raw transfers (run in a child process) -------------------------------------


def _payload(size: int, _cache: dict[int, bytes] = {}) -> bytes:  # noqa: B006 - a deliberate cache
    block = _cache.get(0)
    if block is None or len(block) < size:
        block = _cache[0] = os.urandom(max(size, 16 << 20))
    return block[:size]


def _s3_client(o: dict[str, Any]) -> Any:
    """A boto3 S3 client for the bench's moto server (*o*: the storage options)."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=o["endpoint_url"],
        region_name=o["region"],
        aws_access_key_id=o["access_key_id"],
        aws_secret_access_key=o["secret_access_key"],
        config=Config(s3={"addressing_style": "path"}, max_pool_connections=16),
    )


def raw_s3(spec: dict[str, Any]) -> dict[str, Any]:
    from boto3.s3.transfer import TransferConfig

    o = spec["options"]
    s3 = _s3_client(o)
    cfg = TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20, max_concurrency=4)
    payloads = [_payload(n) for n in spec["sizes"]]
    start = time.monotonic()
    for i, data in enumerate(payloads):
        s3.upload_fileobj(io.BytesIO(data), spec["bucket"], f"raw/{i:06d}", Config=cfg)
    return {"seconds": round(time.monotonic() - start, 3), "method": "boto3 upload_fileobj, 8 MiB parts, 4 threads"}


def raw_sftp(spec: dict[str, Any]) -> dict[str, Any]:
    import paramiko

    client = _sftp_login(spec)
    sftp = client.open_sftp()
    try:
        sftp.mkdir(spec["dir"])
    except OSError:
        pass
    payloads = [_payload(n) for n in spec["sizes"]]
    start = time.monotonic()
    for i, data in enumerate(payloads):
        with sftp.open(f"{spec['dir']}/{i:06d}", "wb") as f:
            f.set_pipelined(True)
            f.write(data)  # paramiko splits it into pipelined 32 KiB requests
            f.flush()
            try:
                sftp._request(paramiko.sftp.CMD_EXTENDED, "fsync@openssh.com", f.handle)  # as drkit does
            except (OSError, paramiko.SFTPError):
                pass
    seconds = time.monotonic() - start
    cipher = client.get_transport().local_cipher
    client.close()
    return {"seconds": round(seconds, 3), "method": f"paramiko SFTP ({cipher}, paramiko's default order), pipelined writes, fsync@openssh.com"}


def _sftp_login(spec: dict[str, Any]) -> Any:
    import paramiko

    client = paramiko.SSHClient()
    client.load_host_keys(spec["known_hosts_file"])
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(spec["host"], port=spec["port"], username=spec["user"], key_filename=spec["key_file"], allow_agent=False, look_for_keys=False)
    return client


def _in_threads(items: list[Any], fetch: Callable[[int, Any], int]) -> int:
    """*fetch(thread number, item)* for every item, RAW_THREADS threads taking the next
    item as they finish one; returns the sum of what it returned (bytes)."""
    import threading

    todo = list(reversed(items))
    lock = threading.Lock()
    totals = [0] * RAW_THREADS
    errors: list[BaseException] = []

    def worker(no: int) -> None:
        try:
            while True:
                with lock:
                    if not todo:
                        return
                    item = todo.pop()
                totals[no] += fetch(no, item)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(no,)) for no in range(RAW_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return sum(totals)


def raw_s3_get(spec: dict[str, Any]) -> dict[str, Any]:
    o = spec["options"]
    s3 = _s3_client(o)
    start = time.monotonic()
    got = _in_threads(spec["keys"], lambda _no, key: len(s3.get_object(Bucket=spec["bucket"], Key=key)["Body"].read()))
    seconds = time.monotonic() - start
    if got != spec["size"]:
        raise SystemExit(f"raw S3 download got {got} bytes, expected {spec['size']}")
    return {"seconds": round(seconds, 3), "method": f"boto3 get_object of whole objects, {RAW_THREADS} threads"}


class _Discard:
    """A file object that counts what is written to it and keeps nothing."""

    def __init__(self) -> None:
        self.n = 0

    def write(self, data: bytes) -> int:
        self.n += len(data)
        return len(data)


def raw_sftp_get(spec: dict[str, Any]) -> dict[str, Any]:
    from paramiko.sftp import CMD_EXTENDED

    client = _sftp_login(spec)
    sessions = [client.open_sftp() for _ in range(RAW_THREADS)]
    try:  # the read length the server answers in full (OpenSSH: 255 KiB)
        _t, msg = sessions[0]._request(CMD_EXTENDED, "limits@openssh.com")
        _packet, step = msg.get_int64(), msg.get_int64()
    except OSError:
        step = 0
    step = min(step, 256 * 1024) or 32 * 1024

    def fetch(no: int, path: str) -> int:
        with sessions[no].open(path, "rb") as f:
            size = f.stat().st_size
            f.MAX_REQUEST_SIZE = step  # readv and read() cut at it
            return sum(len(b) for b in f.readv([(o, min(step, size - o)) for o in range(0, size, step)]))

    start = time.monotonic()
    got = _in_threads(spec["paths"], fetch)
    seconds = time.monotonic() - start
    cipher = client.get_transport().local_cipher
    client.close()
    if got != spec["size"]:
        raise SystemExit(f"raw SFTP download got {got} bytes, expected {spec['size']}")
    return {
        "seconds": round(seconds, 3),
        "method": f"paramiko SFTP ({cipher}, paramiko's default order), readv of whole objects in {step // 1024} KiB requests, "
        f"{RAW_THREADS} sessions on one connection, {RAW_THREADS} threads",
    }


RAW = {"s3": raw_s3, "sftp": raw_sftp, "s3-get": raw_s3_get, "sftp-get": raw_sftp_get}


def main() -> int:
    ap = argparse.ArgumentParser(description="remote benchmark (use bench/run.py --remote-only)")
    ap.add_argument("--raw", choices=sorted(RAW))
    ap.add_argument("spec", nargs="?")
    args = ap.parse_args()
    if args.raw:
        spec = json.loads(Path(args.spec).read_text())
        print(json.dumps(RAW[args.raw](spec)))
        return 0
    ap.error("run it through bench/run.py --remote or --remote-only")
    return 2


if __name__ == "__main__":
    sys.exit(main())
