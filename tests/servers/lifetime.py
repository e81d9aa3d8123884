"""Test servers that die with the process that started them.

A test run killed with SIGKILL (a CI timeout, an impatient Ctrl-\\, the OOM killer)
never runs its fixtures' teardown: its sshd and etcd went on listening on loopback
ports until the machine rebooted. Started through :func:`dying_with_starter`, a
server gets SIGTERM from the kernel (``PR_SET_PDEATHSIG``) as soon as its starter is
gone, however it went."""

from __future__ import annotations

import shutil


def dying_with_starter(argv: list[str]) -> list[str]:
    """*argv*, run through util-linux's ``setpriv --pdeathsig TERM`` when it is there
    (it sets the signal, then executes the program in its place: same pid). The signal
    comes when the *thread* that started the program ends: start servers from the
    thread that lives as long as they should (fixtures run in the main thread)."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", *argv] if setpriv else argv
