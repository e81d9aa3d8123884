"""``drkit demo``: the main job on an embedded default, end to end, in one folder.

Creates a sample data set, a config and a passphrase file under DIR, initialises an
encrypted repository there, backs the data up twice (changing a little in between),
restores the latest snapshot and compares every restored byte with the original.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import time
from pathlib import Path

import click
import yaml

from drkit.cli.app import CliState, cli, pass_state
from drkit.cli.common import human_size
from drkit.config import Environment, load_config
from drkit.errors import DamageFound
from drkit.repository.repo import Repository
from drkit.services.backup import BackupOptions, run_backup
from drkit.services.restore import SnapshotReader
from drkit.services.verify import verify_repository
from drkit.storage import open_storage


def _make_sample(root: Path, rng: random.Random) -> None:
    words = "cluster node volume backup restore etcd sqlite token secret argo longhorn traefik grafana".split()
    (root / "etc/app").mkdir(parents=True, exist_ok=True)
    (root / "srv/db").mkdir(parents=True, exist_ok=True)
    (root / "srv/media").mkdir(parents=True, exist_ok=True)
    for i in range(40):
        lines = (" ".join(rng.choice(words) for _ in range(12)) for _ in range(rng.randint(50, 3000)))
        (root / f"etc/app/config-{i:02d}.yaml").write_text("\n".join(lines) + "\n")
    for i in range(6):
        (root / f"srv/media/blob-{i}.bin").write_bytes(rng.randbytes(rng.randint(1, 6) * 1024 * 1024))
    log = "".join(f"2026-11-26T10:{i % 60:02d}:00Z level=info msg=\"{rng.choice(words)} ok\" n={i}\n" for i in range(60000))
    (root / "srv/db/app.log").write_text(log)
    (root / "srv/db/copy-of-log").write_text(log)  # deduplicates against app.log
    (root / "srv/db/current").symlink_to("app.log")
    os.chmod(root / "etc/app/config-00.yaml", 0o600)


def _digest_tree(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "link:" + os.readlink(path)
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest() + f":{oct(path.stat().st_mode & 0o777)}"
        else:
            out[rel] = "dir"
    return out


@cli.command("demo")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=Path("demo"), show_default=True,
              help="Folder for the sample data, config, passphrase and repository.")
@click.option("--fresh", is_flag=True, help="Delete DIR first.")
@pass_state
def demo_cmd(state: CliState, directory: Path, fresh: bool) -> None:
    """Back up a sample data set, restore it, and check every byte (no setup needed).

    Everything lives under DIR (default ./demo): data/, drkit.yaml, passphrase,
    repo/ and restore/. Run it again to see deduplication at work.

    \b
    Examples:
      drkit demo
      drkit demo --dir /tmp/drkit-demo --fresh
    """
    directory = directory.resolve()
    if fresh and directory.exists():
        shutil.rmtree(directory)
    data = directory / "data"
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(2026)
    if not data.exists():
        data.mkdir()
        _make_sample(data, rng)
    pw_file = directory / "passphrase"
    if not pw_file.exists():
        pw_file.write_text(os.urandom(16).hex() + "\n")
        os.chmod(pw_file, 0o600)
    cfg_path = directory / "drkit.yaml"
    cfg_path.write_text(
        "# written by 'drkit demo'\n"
        + yaml.safe_dump(
            {
                "repository": {"url": str(directory / "repo"), "password_file": str(pw_file)},
                "sources": [{"name": "demo-data", "type": "files", "paths": [str(data)], "exclude": ["*.tmp"]}],
            },
            sort_keys=False,
        )
    )
    cfg = load_config(cfg_path, Environment())
    storage = open_storage(cfg.repository.url)
    secret = pw_file.read_text().strip()
    repo = Repository.open(storage, secret) if Repository.exists(storage) else Repository.init(storage, secret)
    state.say(f"repository: {storage.url} (encrypted; passphrase in {pw_file})")

    t0 = time.monotonic()
    first = run_backup(repo, cfg.sources, BackupOptions()).snapshots[0]
    t1 = time.monotonic()
    state.say(
        f"backup 1: {first.stats['entries']} entries, {human_size(first.stats['size'])} in {t1 - t0:.1f}s, "
        f"{human_size(first.stats['bytes_stored'])} stored after dedup+compression"
    )
    # Change about 1% of the data, then back up again.
    victim = data / "srv/media/blob-0.bin"
    with open(victim, "r+b") as f:
        f.seek(512 * 1024)
        f.write(rng.randbytes(64 * 1024))
    (data / "etc/app/new-setting.yaml").write_text("replicas: 1\n")
    t2 = time.monotonic()
    second = run_backup(repo, cfg.sources, BackupOptions()).snapshots[0]
    t3 = time.monotonic()
    state.say(
        f"backup 2: {second.stats['files_unmodified']} files unchanged (not re-read), "
        f"{human_size(second.stats['bytes_read'])} read, {human_size(second.stats['bytes_stored'])} new data stored, in {t3 - t2:.1f}s"
    )
    target = directory / "restore"
    if target.exists():
        shutil.rmtree(target)
    repo.load_index()
    t4 = time.monotonic()
    reader = SnapshotReader(repo, second, target=target)
    result = cfg.sources[0].restore(reader)
    t5 = time.monotonic()
    restored_root = target / str(data).lstrip("/")
    want, got = _digest_tree(data), _digest_tree(restored_root)
    bad = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
    report = verify_repository(repo, read_data=True)
    state.say(f"restore:  {result.files} files, {human_size(result.bytes_written)} in {t5 - t4:.1f}s into {target}")
    state.say(f"verify:   {report.packs_read} packs read, {'no problems' if report.ok else str(len(report.problems)) + ' problem(s)'}")
    if bad or not report.ok:
        for k in bad[:10]:
            click.echo(f"MISMATCH {k}", err=True)
        raise DamageFound(count=len(bad) + len(report.problems))
    state.say(f"check:    all {len(want)} restored entries match the original byte for byte: OK")
    state.say(f"next: drkit -c {cfg_path} snapshots")
