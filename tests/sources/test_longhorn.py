"""longhorn against the FAKE API server (tests/fakes/kube_api.py), driven through the
real ``kubernetes`` client and the real repository (``drkit backup``/``restore``).

Block devices are files: the fake hard-links a volume's backing file into its device
directory while the volume is attached. Volume images carry a real ext4 filesystem
(``mkfs.ext4 -d`` builds it without root) read back with ``debugfs`` and checked with
``e2fsck``.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from drkit.kube import LH_VOLUME, PV, PVC, connect
from drkit.sources import build_source
from drkit.sources.longhorn import LonghornSource
from tests.conftest import require_binary
from tests.fakes.kube_api import LONGHORN_NS, MIB, FakeKube
from tests.sources.kube_cli import PASSWORD, Drkit

SIZE = 64 * MIB


def source_spec(kubeconfig: Path, fake: FakeKube, **extra: Any) -> dict[str, Any]:
    spec = {
        "name": "vols",
        "type": "longhorn",
        "kubeconfig": str(kubeconfig),
        "device_dir": str(fake.device_dir),
        "poll_interval": 0.02,
        "snapshot_timeout": 10,
        "clone_timeout": 10,
        "attach_timeout": 10,
        "backup_timeout": 10,
    }
    spec.update(extra)
    return spec


def make_ext4(fake: FakeKube, volume: str, tmp_path: Path, files: dict[str, bytes]) -> None:
    """Put an ext4 filesystem holding *files* on *volume* (written in place: the
    backing file keeps its inode, as a block device would)."""
    mkfs = require_binary("mkfs.ext4")
    src = tmp_path / f"fs-{volume}"
    src.mkdir()
    for name, data in files.items():
        (src / name).write_bytes(data)
    image = tmp_path / f"{volume}.ext4"
    with open(image, "wb") as f:
        f.truncate(fake.volume_path(volume).stat().st_size)
    subprocess.run([mkfs, "-F", "-q", "-E", "root_owner=0:0", "-d", str(src), str(image)], check=True,
                   capture_output=True)
    with open(image, "rb") as fin, open(fake.volume_path(volume), "r+b") as fout:
        while block := fin.read(4 * MIB):
            fout.write(block)


def fs_read(image: Path, name: str) -> bytes:
    debugfs = require_binary("debugfs")
    return subprocess.run([debugfs, "-R", f"cat /{name}", str(image)], check=True, capture_output=True).stdout


def fsck_ok(image: Path) -> None:
    e2fsck = require_binary("e2fsck")
    proc = subprocess.run([e2fsck, "-fn", str(image)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def wipe_cluster_copy(kubeconfig: Path, namespace: str, pvc: str, volume: str) -> None:
    """What a rebuilt cluster looks like for one app: no PVC, PV or Longhorn volume
    (the provisioned PV has reclaim policy Delete: deleting the claim takes the PV and
    the Longhorn volume with it)."""
    with connect(kubeconfig) as kube:
        kube.delete(PVC, pvc, namespace)
        assert kube.get_or_none(PV, volume) is None
        assert kube.get_or_none(LH_VOLUME, volume, LONGHORN_NS) is None


@pytest.fixture
def app_volume(tmp_path: Path, fake_kube: tuple[Path, FakeKube]) -> tuple[Path, FakeKube, str, dict[str, bytes]]:
    kubeconfig, fake = fake_kube
    volume = fake.provision("apps", "data-db-0", SIZE, labels={"app": "db"})
    files = {"random.bin": os.urandom(3 * MIB + 123), "hello.txt": b"hello from the volume\n"}
    make_ext4(fake, volume, tmp_path, files)
    return kubeconfig, fake, volume, files


def test_drkit_mode_round_trip_of_an_ext4_volume(tmp_path: Path, app_volume: tuple) -> None:
    kubeconfig, fake, volume, files = app_volume
    original = fake.volume_path(volume).read_bytes()
    d = Drkit.setup(tmp_path, [source_spec(kubeconfig, fake)])
    snap = d.backup("vols")
    assert SIZE <= snap["bytes_read"] < SIZE + 64 * 1024  # the image and a small YAML record
    meta = d.snapshot_meta("vols")
    assert meta["mode"] == "drkit" and meta["encrypted_by_drkit"] is True
    (vmeta,) = meta["volumes"]
    assert (vmeta["namespace"], vmeta["pvc"], vmeta["volume"], vmeta["size"]) == ("apps", "data-db-0", volume, str(SIZE))
    # the temporary clone is gone, its device too; the Longhorn snapshot is kept (keep_snapshots: 1)
    assert fake.volume_names() == [volume]
    assert sorted(os.listdir(fake.device_dir)) == [volume]
    (lh_snap,) = fake.list("Snapshot", LONGHORN_NS)
    assert lh_snap["metadata"]["name"] == vmeta["snapshot"] and lh_snap["spec"]["volume"] == volume
    assert lh_snap["metadata"]["labels"]["drkit.io/created-by"] == "drkit"

    out = tmp_path / "out"
    d.restore("vols", "--target", str(out))
    image = out / "volumes/apps/data-db-0.img"
    assert image.read_bytes() == original
    assert (out / "volumes/apps/data-db-0.yaml").exists()
    fsck_ok(image)
    assert fs_read(image, "random.bin") == files["random.bin"]
    # the drill check: size and a read-only e2fsck of the restored image
    check = d.source("vols").check_restored(out, d.latest("vols"))
    assert check.ok, check.problems
    assert check.details == {"apps/data-db-0": "ext4: e2fsck -fn clean"}
    with open(image, "r+b") as f:  # wipe the block group descriptors
        f.seek(4096)
        f.write(b"\xff" * 8192)
    check = d.source("vols").check_restored(out, d.latest("vols"))
    assert not check.ok and "e2fsck -fn found problems" in check.summary


def test_in_place_restore_creates_volume_pv_and_bound_pvc(tmp_path: Path, app_volume: tuple) -> None:
    kubeconfig, fake, volume, files = app_volume
    original = fake.volume_path(volume).read_bytes()
    d = Drkit.setup(tmp_path, [source_spec(kubeconfig, fake)])
    d.backup("vols")
    wipe_cluster_copy(kubeconfig, "apps", "data-db-0", volume)
    assert fake.volume_names() == []

    result = d.restore("vols", "--in-place")
    assert result["details"]["volumes"] == [{"pvc": "apps/data-db-0", "volume": volume, "mode": "drkit", "how": "new"}]
    vol = fake.get("Volume", LONGHORN_NS, volume)
    assert vol is not None
    assert vol["spec"]["numberOfReplicas"] == 1 and vol["spec"]["frontend"] == "blockdev"
    assert vol["spec"]["size"] == str(SIZE) and "fromBackup" not in vol["spec"]
    assert vol["status"]["state"] == "detached"  # drkit detached it after writing
    assert fake.volume_path(volume).read_bytes() == original
    fsck_ok(fake.volume_path(volume))
    assert fs_read(fake.volume_path(volume), "hello.txt") == files["hello.txt"]

    pv = fake.get("PersistentVolume", None, volume)
    pvc = fake.get("PersistentVolumeClaim", "apps", "data-db-0")
    assert pv is not None and pvc is not None
    assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Retain"
    assert pv["spec"]["csi"]["driver"] == "driver.longhorn.io" and pv["spec"]["csi"]["volumeHandle"] == volume
    assert pv["spec"]["csi"]["fsType"] == "ext4"
    assert pv["spec"]["claimRef"]["namespace"] == "apps" and pv["spec"]["claimRef"]["name"] == "data-db-0"
    assert pv["spec"]["claimRef"]["uid"] == pvc["metadata"]["uid"]  # bound to the new PVC, not a stale one
    assert pvc["spec"]["volumeName"] == volume and pvc["status"]["phase"] == "Bound"
    assert pvc["spec"]["storageClassName"] == "longhorn"
    assert pvc["spec"]["resources"]["requests"]["storage"] == str(SIZE)
    assert pvc["metadata"]["labels"] == {"app": "db"}
    # a second in-place restore refuses to overwrite the bound PVC
    err = d.fails("restore", "latest", "-s", "vols", "--in-place")
    assert err.exit_code == 9 and "bound" in err.message and "--force" in (err.hint or "")


def test_force_replaces_a_bound_pvc_and_dry_run_creates_nothing(tmp_path: Path, app_volume: tuple) -> None:
    kubeconfig, fake, volume, _ = app_volume
    original = fake.volume_path(volume).read_bytes()
    d = Drkit.setup(tmp_path, [source_spec(kubeconfig, fake)])
    d.backup("vols")
    before = {(k, n) for k, _, n in fake.deleted}
    lines = d.restore("vols", "--in-place", "--force", "--dry-run")["lines"]
    assert any(line.startswith("would delete PersistentVolumeClaim apps/data-db-0 (uid ") for line in lines)
    kinds = [re.match(r"would create (\w+) ", line).group(1) for line in lines if line.startswith("would create")]
    assert kinds == ["Volume", "PersistentVolume", "PersistentVolumeClaim"]
    volume_yaml = next(line for line in lines if line.startswith("would create Volume"))
    assert "numberOfReplicas: 1" in volume_yaml and "frontend: blockdev" in volume_yaml
    assert fake.volume_names() == [volume] and {(k, n) for k, _, n in fake.deleted} == before

    # the workload is scaled down; --force replaces the PVC with one bound to a new volume
    before_run = list(fake.deleted)
    d.restore("vols", "--in-place", "--force")
    pvc = fake.get("PersistentVolumeClaim", "apps", "data-db-0")
    assert pvc is not None and pvc["status"]["phase"] == "Bound"
    new_volume = pvc["spec"]["volumeName"]
    assert new_volume != volume and new_volume.startswith(volume[:50])  # the old volume is left alone
    assert sorted(fake.volume_names()) == sorted([volume, new_volume])
    assert fake.volume_path(new_volume).read_bytes() == original
    old_pv = fake.get("PersistentVolume", None, volume)  # kept, Retain, Released
    assert old_pv is not None and old_pv["spec"]["persistentVolumeReclaimPolicy"] == "Retain"
    assert [d for d in fake.deleted if d not in before_run] == [("PersistentVolumeClaim", "apps", "data-db-0")]


def _chunks_not_in(d: Drkit, image: bytes, earlier: bytes) -> int:
    """Bytes of the distinct chunks of *image* that *earlier* does not have, as the
    repository of *d* cuts them."""
    import io

    from drkit.repository.chunker import cut_blocks
    from drkit.repository.repo import Repository
    from drkit.storage import open_storage

    url = yaml.safe_load(d.config.read_text())["repository"]["url"]
    chunker = Repository.open(open_storage(url, {}), PASSWORD).chunker()
    old = set(cut_blocks(chunker, io.BytesIO(earlier)))
    return sum(len(c) for c in set(cut_blocks(chunker, io.BytesIO(image))) - old)


def test_second_backup_stores_only_changed_regions(tmp_path: Path, fake_kube: tuple[Path, FakeKube]) -> None:
    kubeconfig, fake = fake_kube
    volume = fake.provision("apps", "blob", SIZE)
    with open(fake.volume_path(volume), "r+b") as f:
        f.write(os.urandom(40 * MIB))  # the last 24 MiB stay zero: they must cost (almost) nothing
    d = Drkit.setup(tmp_path, [source_spec(kubeconfig, fake)])
    first = d.backup("vols")
    assert SIZE <= first["bytes_read"] < SIZE + 64 * 1024
    assert first["bytes_added"] >= 40 * MIB
    # the 24 MiB of zeros cost (almost) nothing: identical max-size zero chunks dedup and
    # compress; only the chunk straddling data and zeros (at most 8 MiB, stored raw when
    # its start is incompressible) is paid for
    assert 40 * MIB <= first["bytes_stored"] < 40 * MIB + 9 * MIB
    before = fake.volume_path(volume).read_bytes()
    with open(fake.volume_path(volume), "r+b") as f:
        f.seek(17 * MIB)
        f.write(os.urandom(3 * MIB))
    second = d.backup("vols")
    assert SIZE <= second["bytes_read"] < SIZE + 64 * 1024
    # Exactly the chunks the change touched: the change and the chunks cut through at its
    # ends, as this repository's chunker (its seed is random) cuts the two images; far
    # below storing the 40 MiB again. (A fixed bound failed now and then: at some seeds
    # the chunks at the two ends add more than 8 MiB.)
    new = _chunks_not_in(d, fake.volume_path(volume).read_bytes(), before)
    assert 3 * MIB <= new < 3 * MIB + 3 * 8 * MIB, new
    assert new <= second["bytes_added"] < new + 64 * 1024, (second["bytes_added"], new)
    assert second["bytes_stored"] < new + 64 * 1024
    # both snapshots restore to their own content
    out = tmp_path / "second"
    d.restore("vols", "--target", str(out))
    assert (out / "volumes/apps/blob.img").read_bytes() == fake.volume_path(volume).read_bytes()
    # random bytes where the PV promises ext4: the drill check says so
    check = d.source("vols").check_restored(out, d.latest("vols"))
    assert not check.ok and check.problems == ["apps/blob: no ext2/3/4 superblock, although the PV says ext4"]


@pytest.mark.parametrize("failure", ["read", "attach-timeout", "clone"])
def test_clone_is_deleted_whatever_fails(tmp_path: Path, app_volume: tuple, failure: str) -> None:
    kubeconfig, fake, volume, _ = app_volume
    if failure == "read":
        fake.break_devices = True
    elif failure == "attach-timeout":
        fake.stall_attach = True
    else:
        fake.fail_clones = "replica failed"
    d = Drkit.setup(tmp_path, [source_spec(kubeconfig, fake, attach_timeout=0.5)])
    err = d.fails("backup", "-s", "vols")
    expected = {"read": "cannot read the block device", "attach-timeout": "timed out after 0.5s waiting for Longhorn "
                "volume drkit-clone-", "clone": "could not clone snapshot"}[failure]
    assert expected in err.message
    assert fake.volume_names() == [volume]  # the clone is gone
    clones = [n for k, _, n in fake.deleted if k == "Volume"]
    assert len(clones) == 1 and clones[0].startswith("drkit-clone-")
    assert not any(p.name.startswith("drkit-clone-") for p in fake.device_dir.iterdir())


def test_snapshot_failures_and_timeouts(tmp_path: Path, app_volume: tuple) -> None:
    kubeconfig, fake, volume, _ = app_volume
    d = Drkit.setup(tmp_path, [source_spec(kubeconfig, fake, snapshot_timeout=0.3)])
    fake.stall_snapshots = True
    err = d.fails("backup", "-s", "vols")
    assert "timed out after 0.3s waiting for Longhorn snapshot" in err.message and "snapshot_timeout" in (err.hint or "")
    fake.stall_snapshots = False
    fake.fail_snapshots = "engine unavailable"
    err = d.fails("backup", "-s", "vols")
    assert f"of volume {volume} failed: engine unavailable" in err.message


def test_native_mode_records_url_and_never_deletes_backups(tmp_path: Path, app_volume: tuple) -> None:
    kubeconfig, fake, volume, files = app_volume
    original = fake.volume_path(volume).read_bytes()
    d = Drkit.setup(tmp_path, [source_spec(kubeconfig, fake, mode="native")])
    d.backup("vols")
    d.backup("vols")
    meta = d.snapshot_meta("vols")
    assert meta["mode"] == "native" and meta["encrypted_by_drkit"] is False
    (vmeta,) = meta["volumes"]
    url = vmeta["backup_url"]
    assert re.fullmatch(rf"s3://drkit-test@us-east-1/backupstore\?backup=backup-[0-9a-f]{{16}}&volume={volume}", url)
    backups = fake.list("Backup", LONGHORN_NS)
    assert len(backups) == 2 and all(b["status"]["state"] == "Completed" for b in backups)
    assert all(b["metadata"]["labels"]["backup-volume"] == volume for b in backups)
    assert not [x for x in fake.deleted if x[0] == "Backup"]
    # retention removed the older drkit snapshot, not the Backups
    assert len(fake.list("Snapshot", LONGHORN_NS)) == 1
    assert [x[0] for x in fake.deleted] == ["Snapshot"]

    wipe_cluster_copy(kubeconfig, "apps", "data-db-0", volume)
    d.restore("vols", "--in-place")
    vol = fake.get("Volume", LONGHORN_NS, volume)
    assert vol is not None and vol["spec"]["fromBackup"] == url and vol["spec"]["numberOfReplicas"] == 1
    assert fake.volume_path(volume).read_bytes() == original
    assert fs_read(fake.volume_path(volume), "hello.txt") == files["hello.txt"]
    pvc = fake.get("PersistentVolumeClaim", "apps", "data-db-0")
    assert pvc is not None and pvc["status"]["phase"] == "Bound" and pvc["spec"]["volumeName"] == volume


def test_native_backup_error_and_timeout_leave_the_backup_cr(tmp_path: Path, app_volume: tuple) -> None:
    kubeconfig, fake, _, _ = app_volume
    d = Drkit.setup(tmp_path, [source_spec(kubeconfig, fake, mode="native", backup_timeout=0.3)])
    fake.fail_backups = "backup target unreachable"
    err = d.fails("backup", "-s", "vols")
    assert "failed: backup target unreachable" in err.message
    fake.fail_backups = None
    fake.stall_backups = True
    err = d.fails("backup", "-s", "vols")
    assert "timed out" in err.message and "never deletes" in (err.hint or "")
    states = sorted(b["status"]["state"] for b in fake.list("Backup", LONGHORN_NS))
    assert states == ["Error", "InProgress"]
    assert not [x for x in fake.deleted if x[0] == "Backup"]


def test_retention_keeps_the_newest_drkit_snapshots_only(tmp_path: Path, fake_kube: tuple[Path, FakeKube]) -> None:
    kubeconfig, fake = fake_kube
    volume = fake.provision("apps", "small", 8 * MIB)
    fake.seed({"apiVersion": "longhorn.io/v1beta2", "kind": "Snapshot",
               "metadata": {"name": "users-own", "namespace": LONGHORN_NS},
               "spec": {"volume": volume, "createSnapshot": True}})
    d = Drkit.setup(tmp_path, [source_spec(kubeconfig, fake, keep_snapshots=2)])
    made = []
    for _ in range(3):
        d.backup("vols")
        made.append(d.snapshot_meta("vols")["volumes"][0]["snapshot"])
    names = sorted(s["metadata"]["name"] for s in fake.list("Snapshot", LONGHORN_NS))
    assert names == sorted(made[1:] + ["users-own"])


def test_hooks_run_around_the_snapshots_locally_and_in_pods(tmp_path: Path, app_volume: tuple) -> None:
    kubeconfig, fake, _, _ = app_volume
    fake.seed({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "db-0", "namespace": "apps"},
               "spec": {"containers": [{"name": "postgres", "image": "postgres:16"}, {"name": "exporter"}]}},
              status={"phase": "Running"})
    log = tmp_path / "hooks.log"
    snapshots_at_pre: list[int] = []

    def in_pod(ns: str, pod: str, container: str, argv: list[str]) -> tuple[int, bytes, bytes]:
        snapshots_at_pre.append(len(fake.list("Snapshot", LONGHORN_NS)))
        with open(log, "a") as f:
            f.write(f"{ns}/{pod}/{container}: {' '.join(argv)}\n")
        return 0, b"CHECKPOINT\n", b""

    fake.exec_handler = in_pod
    spec = source_spec(kubeconfig, fake,
                       pre_hooks=[["sh", "-c", f"echo local-pre >> {log}"],
                                  {"command": ["psql", "-c", "CHECKPOINT"], "pod": "apps/db-0",
                                   "container": "postgres"}],
                       post_hooks=[["sh", "-c", f"echo local-post >> {log}"]])
    d = Drkit.setup(tmp_path, [spec])
    d.backup("vols")
    assert log.read_text() == "local-pre\napps/db-0/postgres: psql -c CHECKPOINT\nlocal-post\n"
    assert snapshots_at_pre == [0]  # the pod hook ran before the snapshot was requested
    assert fake.execs == [("apps", "db-0", "postgres", ["psql", "-c", "CHECKPOINT"])]


def test_a_failing_pre_hook_aborts_but_post_hooks_still_run(tmp_path: Path, app_volume: tuple) -> None:
    kubeconfig, fake, _, _ = app_volume
    fake.seed({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "db-0", "namespace": "apps"},
               "spec": {"containers": [{"name": "postgres"}]}}, status={"phase": "Running"})
    log = tmp_path / "hooks.log"
    post = [["sh", "-c", f"echo post >> {log}"]]
    cases = [
        ([["sh", "-c", "echo boom >&2; exit 3"]], "exit 3", 1),
        ([{"command": ["sh", "-c", "echo frozen-fail >&2; exit 4"], "pod": "apps/db-0"}],
         "pre hook 'sh' in pod apps/db-0 failed (exit 4): frozen-fail", 1),
        ([{"command": ["true"], "pod": "apps/db-9"}], 'pods "db-9" not found', 2),
        ([{"command": ["true"], "pod": "apps/db-0", "container": "nope"}], "container nope is not valid", 9),
    ]
    for i, (pre, message, code) in enumerate(cases):
        d = Drkit.setup(tmp_path / str(i), [source_spec(kubeconfig, fake, pre_hooks=pre, post_hooks=post)])
        err = d.fails("backup", "-s", "vols")
        assert message in err.message and err.exit_code == code, (err.message, err.exit_code)
        assert fake.list("Snapshot", LONGHORN_NS) == []
        assert log.read_text().count("post") == i + 1  # the post hook undid whatever the pre hooks did


def test_hook_options_are_validated(tmp_path: Path) -> None:
    from drkit.errors import ConfigError

    with pytest.raises(ConfigError, match="pre_hooks"):
        build_source({"name": "v", "type": "longhorn", "pre_hooks": [{"command": []}]}, key="sources[0]")
    with pytest.raises(ConfigError, match="pod"):
        build_source({"name": "v", "type": "longhorn", "pre_hooks": [{"command": ["x"], "pod": "no-namespace"}]},
                     key="sources[0]")
    src = build_source({"name": "v", "type": "longhorn", "pre_hooks": [["sync"]]}, key="sources[0]")
    assert isinstance(src, LonghornSource) and src.options.pre_hooks[0].command == ["sync"]


def test_selection_skips_non_longhorn_pvcs_and_refuses_named_ones(tmp_path: Path, app_volume: tuple) -> None:
    kubeconfig, fake, volume, _ = app_volume
    fake.seed({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "nfs-pv"},
               "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"],
                        "nfs": {"server": "nas", "path": "/export"}}})
    fake.seed({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
               "metadata": {"name": "shared", "namespace": "apps"},
               "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}},
                        "volumeName": "nfs-pv", "storageClassName": ""}})
    src = build_source(source_spec(kubeconfig, fake), key="sources[0]")
    assert isinstance(src, LonghornSource)
    with connect(kubeconfig) as kube:
        selected, skipped = src.select(kube)
    assert [s.ref for s in selected] == ["apps/data-db-0"] and selected[0].volume_name == volume
    assert skipped == ["PVC apps/shared is not a Longhorn volume (driver none)"]
    d = Drkit.setup(tmp_path, [source_spec(kubeconfig, fake, pvcs=["apps/shared"])])
    err = d.fails("backup", "-s", "vols")
    assert err.exit_code == 2 and "not a Longhorn volume" in err.message
    d2 = Drkit.setup(tmp_path / "two", [source_spec(kubeconfig, fake, namespaces=["empty"])])
    err = d2.fails("backup", "-s", "vols")
    assert err.exit_code == 9 and "selected no Longhorn volumes" in err.message


def test_two_volumes_and_the_volume_filter(tmp_path: Path, fake_kube: tuple[Path, FakeKube]) -> None:
    kubeconfig, fake = fake_kube
    contents = {}
    for ns, pvc in (("apps", "a"), ("web", "b")):
        volume = fake.provision(ns, pvc, 4 * MIB)
        contents[f"{ns}/{pvc}"] = os.urandom(4 * MIB)
        fake.volume_path(volume).write_bytes(contents[f"{ns}/{pvc}"])
    d = Drkit.setup(tmp_path, [source_spec(kubeconfig, fake)])
    d.backup("vols")
    assert [(v["namespace"], v["pvc"]) for v in d.snapshot_meta("vols")["volumes"]] == [("apps", "a"), ("web", "b")]
    out = tmp_path / "only-b"
    d.restore("vols", "--target", str(out), "--volume", "web/b")
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "volumes/web/b.img", "volumes/web/b.yaml"]
    assert (out / "volumes/web/b.img").read_bytes() == contents["web/b"]
    err = d.fails("restore", "latest", "-s", "vols", "--target", str(tmp_path / "x"), "--volume", "apps/zzz")
    assert err.exit_code == 2 and "apps/zzz" in err.message and "apps/a, web/b" in (err.hint or "")


def test_native_restore_before_the_backup_target_synced_is_explained(
        tmp_path: Path, app_volume: tuple) -> None:
    kubeconfig, fake, volume, _ = app_volume
    d = Drkit.setup(tmp_path, [source_spec(kubeconfig, fake, mode="native")])
    d.backup("vols")
    wipe_cluster_copy(kubeconfig, "apps", "data-db-0", volume)
    with connect(kubeconfig) as kube:  # a rebuilt cluster: Longhorn has not synced the backup target yet
        from drkit.kube import LH_BACKUP

        for b in fake.list("Backup", LONGHORN_NS):
            kube.delete(LH_BACKUP, b["metadata"]["name"], LONGHORN_NS)
    err = d.fails("restore", "latest", "-s", "vols", "--in-place")
    assert err.exit_code == 9 and "Longhorn refused to restore apps/data-db-0" in err.message
    assert "synced" in (err.hint or "")
    assert fake.get("PersistentVolumeClaim", "apps", "data-db-0") is None


def test_force_on_a_mounted_claim_refuses_before_any_change(tmp_path: Path, app_volume: tuple) -> None:
    kubeconfig, fake, volume, _ = app_volume
    d = Drkit.setup(tmp_path, [source_spec(kubeconfig, fake)])
    d.backup("vols")
    fake.seed({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "db-0", "namespace": "apps", "ownerReferences": [
                   {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": "u-db", "controller": True}]},
               "spec": {"containers": [{"name": "postgres"}],
                        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data-db-0"}}]}},
              status={"phase": "Running"})
    uids = {k: fake.get(k, ns, n)["metadata"]["uid"] for k, ns, n in
            (("PersistentVolumeClaim", "apps", "data-db-0"), ("PersistentVolume", None, volume),
             ("Volume", LONGHORN_NS, volume))}
    deleted, n = list(fake.deleted), len(fake.audit)
    err = d.fails("restore", "latest", "-s", "vols", "--in-place", "--force")
    assert err.exit_code == 9
    assert err.message == "PVC apps/data-db-0 is mounted by pod apps/db-0 (StatefulSet db): not replacing it"
    assert "kubectl -n apps scale statefulset/db --replicas=0" in (err.hint or "")
    assert fake.deleted == deleted
    assert [a for a in fake.audit[n:] if a.method != "GET"] == []  # not one change was sent
    assert {k: fake.get(k, ns, n)["metadata"]["uid"] for k, ns, n in
            (("PersistentVolumeClaim", "apps", "data-db-0"), ("PersistentVolume", None, volume),
             ("Volume", LONGHORN_NS, volume))} == uids
    assert fake.get("PersistentVolume", None, volume)["spec"]["persistentVolumeReclaimPolicy"] == "Delete"
    assert fake.rejected() == []
