"""The engine end to end through the CLI, on this host and over a real sshd.

Each test writes a small runbook to a temp dir, runs ``drkit runbook ...`` in-process,
and checks the files the steps made, the journal, and what was printed.
"""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from drkit.runbook.journal import Journal

IDEMPOTENT = """
description: test runbook
when_to_use: tests
defaults: {target: remote, sudo: true, timeout: 20}
variables:
  base: {description: a temp dir}
  mode: "0640"
steps:
  - name: dir
    probe: {path: "{{ base }}/d"}
    apply: mkdir -p {{ base }}/d && echo dir >> {{ base }}/applied.log
  - name: conf
    apply:
      template: {content: "hello from {{ base }}\\n", dest: "{{ base }}/d/conf.txt", mode: "0640"}
  - name: blob
    apply:
      upload: {src: "{{ base }}/local/blob.bin", dest: "{{ base }}/d/blob.bin", mode: "0600"}
  - name: tree
    apply:
      upload: {src: "{{ base }}/local/tree", dest: "{{ base }}/d/tree"}
  - name: never
    when: base == 'nope'
    apply: touch {{ base }}/never
  - name: check
    probe: test -s {{ base }}/d/blob.bin
"""


def write(tmp_path: Path, text: str, name: str = "t.yaml") -> Path:
    p = tmp_path / "rb" / name
    p.parent.mkdir(exist_ok=True)
    p.write_text(text)
    return p


def journal(state: Path, run_id: str | None = None) -> Journal:
    return Journal.load(state, run_id) if run_id else Journal.latest(state)


def statuses(j: Journal) -> dict[str, str]:
    return {r.name: r.status for r in j.steps}


def test_second_run_changes_nothing_and_says_so(tmp_path, drkit, target):
    base = tmp_path / "base"
    (base / "local" / "tree" / "sub").mkdir(parents=True)
    blob = os.urandom(300_000)
    (base / "local" / "blob.bin").write_bytes(blob)
    (base / "local" / "tree" / "a.yaml").write_text("a: 1\n")
    (base / "local" / "tree" / "sub" / "b.yaml").write_text("b: 2\n")
    rb = write(tmp_path, IDEMPOTENT)
    state = tmp_path / "state"
    args = ["runbook", "run", rb, "--state-dir", state, "--var", f"base={base}", *target.args]

    r1 = drkit(*args)
    assert r1.code == 0, r1.text
    j1 = journal(state)
    assert statuses(j1) == {"dir": "changed", "conf": "changed", "blob": "changed", "tree": "changed",
                            "never": "skipped", "check": "ok"}
    assert (base / "d" / "conf.txt").read_text() == f"hello from {base}\n"
    assert stat.S_IMODE((base / "d" / "conf.txt").stat().st_mode) == 0o640
    assert (base / "d" / "blob.bin").read_bytes() == blob
    assert stat.S_IMODE((base / "d" / "blob.bin").stat().st_mode) == 0o600
    assert (base / "d" / "tree" / "sub" / "b.yaml").read_text() == "b: 2\n"
    assert not (base / "never").exists()
    assert not list((base / "d").glob("*.drkit-new"))
    assert "4 changed" in r1.out and "nothing changed" not in r1.out

    r2 = drkit(*args)
    assert r2.code == 0, r2.text
    j2 = journal(state)
    assert j2.run_id != j1.run_id
    assert statuses(j2) == {"dir": "ok", "conf": "ok", "blob": "ok", "tree": "ok", "never": "skipped", "check": "ok"}
    assert "nothing changed: every step already held" in r2.out
    assert (base / "applied.log").read_text() == "dir\n"

    # drift in one file: only that step changes
    (base / "d" / "tree" / "a.yaml").write_text("a: drifted\n")
    r3 = drkit(*args)
    assert r3.code == 0, r3.text
    assert statuses(journal(state))["tree"] == "changed"
    assert [s for s, v in statuses(journal(state)).items() if v == "changed"] == ["tree"]
    assert (base / "d" / "tree" / "a.yaml").read_text() == "a: 1\n"


RESUMABLE = """
description: four steps, the third fails until a gate file exists
when_to_use: tests
defaults: {target: remote, timeout: 20}
variables: {base: {description: dir}}
steps:
  - name: s1
    probe: echo probe s1 >> {{ base }}/probes.log; [ -e {{ base }}/out1 ]
    apply: echo apply s1 >> {{ base }}/applies.log; touch {{ base }}/out1
  - name: s2
    probe: echo probe s2 >> {{ base }}/probes.log; [ -e {{ base }}/out2 ]
    apply: echo apply s2 >> {{ base }}/applies.log; touch {{ base }}/out2
  - name: s3
    probe: echo probe s3 >> {{ base }}/probes.log; [ -e {{ base }}/out3 ]
    apply: >-
      [ -e {{ base }}/gate ] || { echo "gate is missing" >&2; exit 5; };
      echo apply s3 >> {{ base }}/applies.log; touch {{ base }}/out3
    on_failure: create the gate file
  - name: s4
    probe: echo probe s4 >> {{ base }}/probes.log; [ -e {{ base }}/out4 ]
    apply: echo apply s4 >> {{ base }}/applies.log; touch {{ base }}/out4
"""


def test_resume_continues_at_the_failed_step_and_not_before(tmp_path, drkit, target):
    base = tmp_path / "base"
    base.mkdir()
    rb = write(tmp_path, RESUMABLE)
    state = tmp_path / "state"
    r = drkit("runbook", "run", rb, "--state-dir", state, "--var", f"base={base}", *target.args)
    assert r.code == 7, r.text
    assert "step 's3' failed: shell exited 5: gate is missing" in r.err
    assert "hint: create the gate file; then 'drkit runbook resume" in r.err
    j = journal(state)
    assert j.status == "failed" and j.failed_step == "s3"
    assert statuses(j) == {"s1": "changed", "s2": "changed", "s3": "failed", "s4": "not-run"}
    assert "gate is missing" in j.record("s3").output_tail
    assert (base / "applies.log").read_text() == "apply s1\napply s2\n"

    st = drkit("runbook", "status", "--state-dir", state)
    assert st.code == 0
    assert "failed" in st.out and f"drkit runbook resume {j.run_id}" in st.out

    (base / "gate").touch()
    probes_before = (base / "probes.log").read_text().splitlines()
    r2 = drkit("runbook", "resume", "--state-dir", state)
    assert r2.code == 0, r2.text
    new_probes = (base / "probes.log").read_text().splitlines()[len(probes_before):]
    # probe, apply, probe again: for s3 and s4 only
    assert new_probes == ["probe s3", "probe s3", "probe s4", "probe s4"]
    assert (base / "applies.log").read_text() == "apply s1\napply s2\napply s3\napply s4\n"
    j2 = journal(state, j.run_id)
    assert j2.status == "ok" and len(j2.resumed) == 1
    assert statuses(j2) == {"s1": "changed", "s2": "changed", "s3": "changed", "s4": "changed"}

    again = drkit("runbook", "resume", j.run_id, "--state-dir", state)
    assert again.code == 2 and "nothing to resume" in again.err


WAITS = """
description: until/retries/delay
when_to_use: tests
defaults: {target: local, timeout: 20}
variables:
  base: {description: dir}
  retries: "40"
steps:
  - name: flag-appears
    probe: '[ -e {{ base }}/flag ]'
    retries: "{{ retries }}"
    delay: 0.05
  - name: started-later
    apply: (sleep 0.3; touch {{ base }}/flag2) >/dev/null 2>&1 &
    until: '[ -e {{ base }}/flag2 ]'
    retries: 40
    delay: 0.05
  - name: wait-command
    apply:
      wait-for: {command: 'n=$(cat {{ base }}/n 2>/dev/null || echo 0); echo $((n+1)) > {{ base }}/n; [ $n -ge 2 ]'}
    retries: 5
    delay: 0.01
"""


def test_until_waits_for_the_state(tmp_path, drkit):
    base = tmp_path / "base"
    base.mkdir()
    rb = write(tmp_path, WAITS)
    state = tmp_path / "state"
    timer = threading.Timer(0.4, lambda: (base / "flag").touch())
    timer.start()
    try:
        t0 = time.monotonic()
        r = drkit("runbook", "run", rb, "--state-dir", state, "--var", f"base={base}")
    finally:
        timer.cancel()
    assert r.code == 0, r.text
    assert time.monotonic() - t0 >= 0.4
    j = journal(state)
    assert statuses(j) == {"flag-appears": "ok", "started-later": "changed", "wait-command": "changed"}
    assert j.record("flag-appears").attempts > 2
    assert j.record("started-later").attempts > 1
    assert (base / "n").read_text() == "3\n"  # ran until it succeeded: three times


def test_until_times_out_and_says_how_often_it_tried(tmp_path, drkit):
    base = tmp_path / "base"
    base.mkdir()
    rb = write(tmp_path, WAITS)
    state = tmp_path / "state"
    t0 = time.monotonic()
    r = drkit("runbook", "run", rb, "--state-dir", state, "--var", f"base={base}", "--var", "retries=5")
    elapsed = time.monotonic() - t0
    assert r.code == 7
    assert "check did not hold after 6 attempt(s): [ -e " in r.err
    assert 0.25 <= elapsed < 10
    j = journal(state)
    assert statuses(j) == {"flag-appears": "failed", "started-later": "not-run", "wait-command": "not-run"}
    assert j.record("flag-appears").attempts == 6


def test_a_hung_command_is_killed_at_its_timeout(tmp_path, drkit, target):
    rb = write(tmp_path, """
description: hangs
when_to_use: tests
steps:
  - name: hang
    apply: echo started; sleep 60
    timeout: 1
""")
    t0 = time.monotonic()
    r = drkit("runbook", "run", rb, "--state-dir", tmp_path / "state", *target.args)
    assert r.code == 7
    assert time.monotonic() - t0 < 15
    assert "step 'hang' failed: shell timed out: started" in r.err


SECRETS = """
description: secrets never print
when_to_use: tests
defaults: {target: remote, timeout: 20}
variables:
  base: {description: dir}
secrets:
  TOKEN: {env: TEST_RB_TOKEN}
  PASSWORD: {env: TEST_RB_PASSWORD_UNSET, file: "{{ base }}/password.txt"}
steps:
  - name: echo
    probe: '[ -e {{ base }}/argv.txt ]'
    apply: >-
      echo "token is {{ secrets.TOKEN }}";
      cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' ' > {{ base }}/argv.txt
  - name: stdin
    probe: {path: "{{ base }}/stdin.txt"}
    apply:
      shell: cat > {{ base }}/stdin.txt && cat {{ base }}/stdin.txt
      stdin: "pw={{ secrets.PASSWORD }}\\n"
  - name: tmpl
    apply:
      template: {content: "token: {{ secrets.TOKEN }}\\n", dest: "{{ base }}/conf.yaml", mode: "0600"}
  - name: fails
    apply: echo "failing with {{ secrets.PASSWORD }} and {{ secrets.TOKEN }}" >&2; exit 1
"""


def test_secrets_are_used_but_never_printed_or_journaled(tmp_path, drkit, target, monkeypatch):
    token = "tok-" + os.urandom(12).hex()
    password = "pw-" + os.urandom(12).hex()
    base = tmp_path / "base"
    base.mkdir()
    (base / "password.txt").write_text(password + "\n")
    monkeypatch.setenv("TEST_RB_TOKEN", token)
    rb = write(tmp_path, SECRETS)
    state = tmp_path / "state"
    r = drkit("runbook", "run", rb, "--state-dir", state, "--var", f"base={base}", *target.args)
    assert r.code == 7, r.text
    # used: delivered through the environment, stdin and the template
    assert (base / "stdin.txt").read_text() == f"pw={password}\n"
    assert (base / "conf.yaml").read_text() == f"token: {token}\n"
    # never in any process's argv while the step ran, nor in output, errors or the journal
    argv = (base / "argv.txt").read_text()
    assert "DRKIT_SECRET_TOKEN" in argv and token not in argv
    assert "token is ***" in r.out
    assert "pw=***" in r.out
    assert "failing with *** and ***" in r.err
    for text in (r.out, r.err, *(p.read_text() for p in state.iterdir())):
        assert token not in text and password not in text
    st = drkit("runbook", "status", "--state-dir", state, "--json")
    assert token not in st.out and password not in st.out and "failing with ***" in st.out


def test_a_missing_secret_is_a_clear_error(tmp_path, drkit):
    base = tmp_path / "base"
    base.mkdir()
    rb = write(tmp_path, SECRETS)
    r = drkit("runbook", "run", rb, "--state-dir", tmp_path / "state", "--var", f"base={base}", "--only", "echo")
    assert r.code == 7
    assert "secret TOKEN is not available (provide it in environment variable TEST_RB_TOKEN)" in r.err


PLANNED = """
description: plan must not touch anything
when_to_use: tests
variables:
  base: {description: dir}
  version: v1.2.3
secrets:
  TOKEN: {env: TEST_RB_TOKEN}
steps:
  - name: make
    probe: {path: "{{ base }}/made"}
    apply: INSTALL_VERSION={{ version | q }} TOKEN={{ secrets.TOKEN }} touch {{ base }}/made
  - name: conf
    apply:
      template: {content: "v={{ version }} t={{ secrets.TOKEN }}\\n", dest: "{{ base }}/conf"}
  - name: ready
    probe: {kube: {resource: node/n1, condition: Ready}}
    apply:
      wait-for: {kube: {resource: node/n1, condition: Ready, timeout: 60}}
"""


def test_plan_shows_resolved_steps_and_touches_nothing(tmp_path, drkit, monkeypatch):
    base = tmp_path / "base"
    base.mkdir()
    monkeypatch.setenv("TEST_RB_TOKEN", "s3cr3t-value")
    rb = write(tmp_path, PLANNED)
    state = tmp_path / "state"
    r = drkit("runbook", "plan", rb, "--var", f"base={base}", "--var", "version=v9.9.9", "--state-dir", state)
    assert r.code == 0, r.text
    assert f"INSTALL_VERSION=v9.9.9 TOKEN=\"${{DRKIT_SECRET_TOKEN}}\" touch {base}/made" in r.out
    assert f"template: inline content -> {base}/conf (mode 0644)" in r.out
    assert "kubectl wait --for=condition=Ready node/n1 --timeout=60s" in r.out
    assert "probe: [ \"$(kubectl get node/n1 -o jsonpath=" in r.out
    assert "s3cr3t-value" not in r.out
    assert list(base.iterdir()) == [] and not state.exists()

    j = drkit("runbook", "plan", rb, "--var", f"base={base}", "--json")
    assert json.loads(j.out)["steps"][0]["apply"] == [f"shell: INSTALL_VERSION=v1.2.3 TOKEN=\"${{DRKIT_SECRET_TOKEN}}\" touch {base}/made"]

    dry = drkit("runbook", "run", rb, "--var", f"base={base}", "--state-dir", state, "--dry-run", "--only", "make", "--only", "conf")
    assert dry.code == 0, dry.text
    assert statuses(journal(state)) == {"make": "pending", "conf": "pending"}
    assert list(base.iterdir()) == []


@pytest.mark.parametrize(
    "mutation, message",
    [
        (("touch {{ base }}/made", "touch {{ bsae }}/made"),
         "step 'make'.apply[0]: unknown variable 'bsae'"),
        (("wait-for: {kube:", "wait-four: {kube:"),
         "step 'ready' (steps[2]).apply[0]: unknown action"),
        (("{{ secrets.TOKEN }} touch", "{{ secrets.TOKEN2 }} touch"),
         "step 'make'.apply[0]: unknown secret 'TOKEN2'"),
        (("probe: {path:", "probe: {pth:"),
         "step 'make' (steps[0]).probe: a check is a command string or a mapping with one of: command, path, kube"),
    ],
)
def test_plan_fails_on_unknown_names_naming_file_step_and_key(tmp_path, drkit, mutation, message):
    rb = write(tmp_path, PLANNED.replace(*mutation))
    r = drkit("runbook", "plan", rb, "--var", "base=/x")
    assert r.code == 2, r.text
    assert f"error: {rb}: {message}" in r.err


def test_plan_refuses_undeclared_variables_and_missing_values(tmp_path, drkit):
    rb = write(tmp_path, PLANNED)
    r = drkit("runbook", "plan", rb, "--var", "base=/x", "--var", "verison=1")
    assert r.code == 2 and "unknown variable 'verison'" in r.err and "declared: base, version" in r.err
    r = drkit("runbook", "plan", rb)
    assert r.code == 2 and "no value for variable(s) base" in r.err and "--var base=VALUE" in r.err
    r = drkit("runbook", "plan", rb, "--var", "base")
    assert r.code == 2 and "bad --var 'base'" in r.err


def test_only_and_from_select_steps(tmp_path, drkit):
    base = tmp_path / "base"
    base.mkdir()
    rb = write(tmp_path, RESUMABLE)
    (base / "gate").touch()
    state = tmp_path / "state"
    r = drkit("runbook", "run", rb, "--state-dir", state, "--var", f"base={base}", "--only", "s2")
    assert r.code == 0, r.text
    assert (base / "applies.log").read_text() == "apply s2\n"
    r = drkit("runbook", "run", rb, "--state-dir", state, "--var", f"base={base}", "--from", "s3")
    assert r.code == 0, r.text
    assert (base / "applies.log").read_text() == "apply s2\napply s3\napply s4\n"
    assert list(statuses(journal(state))) == ["s3", "s4"]
    r = drkit("runbook", "run", rb, "--state-dir", state, "--var", f"base={base}", "--only", "s9")
    assert r.code == 2 and "no step named 's9'" in r.err and "steps: s1, s2, s3, s4" in r.err


def test_unknown_or_changed_host_key_is_refused(tmp_path, drkit, sshd_server):
    rb = write(tmp_path, RESUMABLE)
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    common = ["runbook", "run", rb, "--state-dir", tmp_path / "state", "--var", f"base={tmp_path}",
              "--target", f"{sshd_server.user}@{sshd_server.host}:{sshd_server.port}", "--identity", sshd_server.key_file]
    r = drkit(*common, "--known-hosts", empty)
    assert r.code == 9, r.text
    assert "unknown host key" in r.err and f"ssh-keyscan -p {sshd_server.port} 127.0.0.1" in r.err
    other = tmp_path / "other_key"
    from tests.servers.sshd import keygen, known_hosts_line

    keygen(other)
    wrong = tmp_path / "known_hosts_wrong"
    wrong.write_text(known_hosts_line(sshd_server.host, sshd_server.port, other.with_suffix(".pub")))
    r = drkit(*common, "--known-hosts", wrong)
    assert r.code == 9, r.text
    assert "does not match" in r.err and "ssh-keygen -f" in r.err
    assert not (tmp_path / "probes.log").exists()


def test_status_of_a_bad_run_id(tmp_path, drkit):
    r = drkit("runbook", "status", "../../etc/passwd", "--state-dir", tmp_path)
    assert r.code == 2 and "bad run id" in r.err
    r = drkit("runbook", "status", "--state-dir", tmp_path / "none")
    assert r.code == 2 and "no runbook runs recorded" in r.err


def test_a_second_concurrent_run_is_refused(tmp_path, drkit):
    import fcntl

    rb = write(tmp_path, RESUMABLE)
    state = tmp_path / "state"
    state.mkdir()
    with open(state / ".t.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("pid 4242 on elsewhere\n")
        held.flush()
        r = drkit("runbook", "run", rb, "--state-dir", state, "--var", f"base={tmp_path}")
    assert r.code == 9
    assert "runbook t is already running (pid 4242 on elsewhere)" in r.err
    assert not (tmp_path / "probes.log").exists()


def test_an_interrupted_run_resumes_at_the_interrupted_step(tmp_path):
    from drkit.errors import Interrupted
    from drkit.runbook.engine import Engine, SecretStore, Selection
    from drkit.runbook.executor import LocalExecutor
    from drkit.runbook.model import load_runbook
    from drkit.runbook.plan import make_plan

    base = tmp_path / "base"
    base.mkdir()
    rb = load_runbook(write(tmp_path, RESUMABLE.replace("  - name: s4\n", "  - name: wait\n    probe: '[ -e {{ base }}/gate ]'\n    retries: 3\n    delay: 0\n  - name: s4\n")))
    plan = make_plan(rb, {"base": str(base)})
    local = LocalExecutor()
    (base / "gate").touch()
    (base / "out3").touch()
    os.unlink(base / "gate")

    def ctrl_c(_: float) -> None:
        raise KeyboardInterrupt

    j = Journal(run_id=Journal.new_run_id("t"), runbook="t", runbook_path=str(rb.path), runbook_sha256="",
                target="local", connection={}, variables=plan.variables, overrides={"base": str(base)},
                selection=Selection().to_dict(), state_dir=tmp_path / "state")
    engine = Engine(plan, {"local": local, "remote": local}, SecretStore(rb, plan.variables, {}), j, sleep=ctrl_c)
    with pytest.raises(Interrupted) as err:
        engine.run(Selection())
    assert f"drkit runbook resume {j.run_id}" in (err.value.hint or "")
    saved = Journal.load(tmp_path / "state", j.run_id)
    assert saved.status == "interrupted" and saved.failed_step == "wait"
    assert statuses(saved) == {"s1": "changed", "s2": "changed", "s3": "ok", "wait": "failed", "s4": "not-run"}
    (base / "gate").touch()
    again = Engine(plan, {"local": local, "remote": local}, SecretStore(rb, plan.variables, {}), saved)
    done = again.resume()
    assert done.status == "ok" and statuses(done)["wait"] == "ok" and statuses(done)["s4"] == "changed"
    assert (base / "applies.log").read_text() == "apply s1\napply s2\napply s4\n"


def test_an_unreachable_target_is_a_clear_error(tmp_path, drkit, sshd_server):
    from tests.servers.sshd import free_port

    rb = write(tmp_path, RESUMABLE)
    r = drkit("runbook", "run", rb, "--state-dir", tmp_path / "state", "--var", f"base={tmp_path}",
              "--target", f"root@127.0.0.1:{free_port()}", "--known-hosts", sshd_server.known_hosts_file)
    assert r.code == 8, r.text
    assert "cannot reach root@127.0.0.1:" in r.err and "is the host up" in r.err


def test_a_failed_upload_leaves_no_partial_file(tmp_path):
    from drkit.errors import UsageError
    from drkit.runbook.executor import LocalExecutor

    dest = tmp_path / "ro" / "f.txt"
    dest.parent.mkdir()
    (dest.parent / "f.txt.drkit-new").mkdir()  # cp cannot create the temp file
    with pytest.raises(UsageError, match=f"cannot write {dest} locally"):
        LocalExecutor().put_file(b"data", str(dest), mode=0o600)
    assert not dest.exists()
    ok = tmp_path / "ok" / "g.txt"
    LocalExecutor().put_file(b"data", str(ok), mode=0o600)
    assert ok.read_bytes() == b"data" and [p.name for p in ok.parent.iterdir()] == ["g.txt"]
