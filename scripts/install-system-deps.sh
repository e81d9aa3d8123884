#!/usr/bin/env bash
# Install the Debian packages drkit's tests and benchmarks run against (real etcd, sshd,
# sqlite3, git, restic, borg, e2fsprogs, kubectl). Installs only what is missing.
set -euo pipefail
need=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
have etcd       || need+=(etcd-server)
have etcdctl    || need+=(etcd-client)
have sshd       || need+=(openssh-server)
have ssh-keygen || need+=(openssh-client)
have sqlite3    || need+=(sqlite3)
have git        || need+=(git)
have restic     || need+=(restic)
have borg       || need+=(borgbackup)
have mkfs.ext4  || need+=(e2fsprogs)
have promtool   || need+=(prometheus)       # promtool: alert rule checks and unit tests
have systemd-analyze || need+=(systemd)    # verifies generated units (nothing is started)
have setpriv    || need+=(util-linux)       # test servers die with a killed test run (--pdeathsig)
# kubectl: runbooks call it; tests run it against the in-repo fake API. Debian ships it as
# kubernetes-client; images with the cloud-sdk apt source have a newer 'kubectl' package.
want_kubectl=0
have kubectl || want_kubectl=1
[ ${#need[@]} -eq 0 ] && [ $want_kubectl -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
if [ $want_kubectl -eq 1 ]; then
  if apt-cache show kubectl >/dev/null 2>&1; then need+=(kubectl); else need+=(kubernetes-client); fi
fi
echo "installing Debian packages: ${need[*]}"
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
