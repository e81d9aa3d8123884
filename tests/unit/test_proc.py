"""drkit.proc: timeouts, redaction, one-line errors."""

from __future__ import annotations

import sys

import pytest

from drkit import proc
from drkit.errors import DrkitError


def test_run_captures_stdout_and_env() -> None:
    res = proc.run([sys.executable, "-c", "import os; print(os.environ['X_TEST'])"], env={"X_TEST": "hello"})
    assert res.returncode == 0
    assert res.text.strip() == "hello"


def test_run_passes_input() -> None:
    res = proc.run([sys.executable, "-c", "import sys; sys.stdout.write(sys.stdin.read().upper())"], input="abc")
    assert res.stdout == b"ABC"


def test_failure_is_one_line_and_redacted() -> None:
    secret = "s3cr3t-token"
    with pytest.raises(proc.CommandFailed) as info:
        proc.run(
            [sys.executable, "-c", f"import sys; sys.stderr.write('bad {secret}\\nline2\\n'); sys.exit(3)", secret],
            redact=[secret],
            hint="do the thing",
        )
    err = info.value
    assert isinstance(err, DrkitError)
    assert err.returncode == 3
    assert secret not in str(err) and secret not in err.cmd
    assert "***" in str(err) and "line2" in str(err) and "exit 3" in str(err)
    assert "\n" not in str(err)
    assert err.hint == "do the thing"


def test_check_false_returns_status() -> None:
    res = proc.run([sys.executable, "-c", "import sys; sys.exit(5)"], check=False)
    assert res.returncode == 5


def test_timeout_kills() -> None:
    with pytest.raises(proc.CommandTimeout) as info:
        proc.run([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5)
    assert "timed out" in str(info.value)


def test_missing_program() -> None:
    with pytest.raises(proc.ProgramNotFound):
        proc.run(["/nonexistent/definitely-not-here"])
    with pytest.raises(proc.ProgramNotFound):
        proc.which("definitely-not-a-program-xyz")


def test_popen_streams_large_output_and_reports_failure() -> None:
    code = "import sys; sys.stderr.write('e'*200000); sys.stdout.write('x'*1000000); sys.exit(0)"
    with proc.popen([sys.executable, "-c", code]) as stream:
        data = stream.stdout.read()
    assert len(data) == 1000000
    with pytest.raises(proc.CommandFailed) as info:
        with proc.popen([sys.executable, "-c", "import sys; print('x'); sys.stderr.write('boom tok'); sys.exit(2)"],
                        redact=["tok"]) as stream:
            stream.stdout.read()
    assert "boom ***" in str(info.value)


def test_children_get_a_scrubbed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """#14 case 5: a child never inherits the passphrase, cloud keys or tokens; only the
    basics (PATH, HOME, locale ...) and what the caller passes for it."""
    for key, value in {"DRKIT_PASSWORD": "pw", "AWS_SECRET_ACCESS_KEY": "aws", "GITHUB_TOKEN": "gh",
                       "DRKIT_IDENTITY_PASSWORD": "idpw", "LC_ALL": "C.UTF-8"}.items():
        monkeypatch.setenv(key, value)
    script = "import json, os; print(json.dumps(dict(os.environ)))"
    import json

    seen = json.loads(proc.run([sys.executable, "-c", script], env={"X_FOR_CHILD": "1"}).text)
    assert not {"DRKIT_PASSWORD", "AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN", "DRKIT_IDENTITY_PASSWORD"} & set(seen)
    assert seen["X_FOR_CHILD"] == "1" and seen["PATH"] and seen["LC_ALL"] == "C.UTF-8"
    seen = json.loads(proc.run([sys.executable, "-c", script]).text)
    assert "DRKIT_PASSWORD" not in seen and "AWS_SECRET_ACCESS_KEY" not in seen
    with proc.popen([sys.executable, "-c", script]) as stream:
        streamed = json.loads(stream.stdout.read())
    assert "DRKIT_PASSWORD" not in streamed and "GITHUB_TOKEN" not in streamed
    # the runbook executor runs the operator's own commands: it asks for everything
    seen = json.loads(proc.run([sys.executable, "-c", script], inherit_env=True).text)
    assert seen["DRKIT_PASSWORD"] == "pw"
