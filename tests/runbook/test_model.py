"""Schema, templating, ``when``, variables, executor wrapping and journal: the pure parts."""

from __future__ import annotations

import os
import subprocess

import pytest
import yaml

from drkit.errors import ConfigError, UsageError
from drkit.runbook.catalog import parse_runbooks_config
from drkit.runbook.errors import RunbookError
from drkit.runbook.executor import PREAMBLE, SshTarget, env_block, wrap_argv
from drkit.runbook.journal import Journal, StepRecord
from drkit.runbook.model import parse_runbook
from drkit.runbook.plan import eval_when, make_plan, resolve_variables
from drkit.runbook.template import Secret, SecretMode, render

BASE = {"description": "d", "when_to_use": "w"}


def rb(steps, **extra):
    return parse_runbook({**BASE, **extra, "steps": steps}, name="t")


@pytest.mark.parametrize(
    "expr, expected",
    [
        ("datastore == 'sqlite'", True),
        ("datastore != 'sqlite'", False),
        ("datastore in ['etcd', 'sqlite'] and mode == 'online'", True),
        ("not (datastore == 'etcd' or flag)", True),
        ("flag", False),
        ("count == 3", True),
        ("empty == ''", True),
        ("enabled == true", True),
    ],
)
def test_when_expressions(expr, expected):
    vars_ = {"datastore": "sqlite", "mode": "online", "flag": "false", "count": "3", "empty": "", "enabled": "true"}
    assert eval_when(expr, vars_, "w") is expected


@pytest.mark.parametrize(
    "expr, message",
    [
        ("datastor == 'x'", "unknown variable 'datastor'"),
        ("__import__('os').system('x')", "unsupported expression"),
        ("datastore.upper() == 'X'", "unsupported expression"),
        ("datastore <= 'x'", "unsupported comparison"),
        ("datastore ==", "cannot parse when"),
        ("datastore in 'abc'", "'in' needs a list"),
    ],
)
def test_when_rejects_anything_else(expr, message):
    with pytest.raises(RunbookError, match=message):
        eval_when(expr, {"datastore": "sqlite"}, "w")


def test_variables_resolve_in_order_and_detect_cycles():
    r = rb([{"name": "a", "probe": "true"}],
           variables={"root": "/r", "data": "{{ root }}/var/{{ sub }}", "sub": "k3s", "n": {"default": "1", "choices": ["1", "2"]}})
    assert resolve_variables(r) == {"root": "/r", "data": "/r/var/k3s", "sub": "k3s", "n": "1"}
    assert resolve_variables(r, {"root": ""}, {"sub": "x", "unrelated": 1}) == {"root": "", "data": "/var/x", "sub": "x", "n": "1"}
    with pytest.raises(RunbookError, match="not one of: 1, 2"):
        resolve_variables(r, {"n": "3"})
    cyc = rb([{"name": "a", "probe": "true"}], variables={"a": "{{ b }}", "b": "{{ a }}"})
    with pytest.raises(RunbookError, match="cycle: a -> b -> a"):
        resolve_variables(cyc)


def test_secrets_are_refused_where_they_would_leak():
    secrets = {"TOK": {"env": "TOK"}}
    for action in ({"drkit": "restore latest --password {{ secrets.TOK }}"},
                   {"upload": {"src": "/a", "dest": "/b/{{ secrets.TOK }}"}}):
        with pytest.raises(RunbookError, match=r"a secret \(\{\{ secrets.TOK \}\}\) is not allowed here"):
            make_plan(rb([{"name": "a", "apply": action}], secrets=secrets))
    with pytest.raises(RunbookError, match="a secret cannot be part of a variable"):
        make_plan(rb([{"name": "a", "probe": "true"}], secrets=secrets, variables={"x": "{{ secrets.TOK }}"}))


def test_template_syntax_and_filters():
    assert render("a {{ x | q }} b", {"x": "it's"}, where="w") == "a 'it'\"'\"'s' b"
    assert render("{{ secrets.T }}", {}, where="w", mode=SecretMode.SHELL, secret_names={"T"}) == '"${DRKIT_SECRET_T}"'
    assert render("{{ secrets.T }}", {}, where="w", mode=SecretMode.CONTENT, secret_names={"T"}) == "<secret:T>"
    assert render("{{ secrets.T }}", {}, where="w", mode=SecretMode.CONTENT, secret_names={"T"}, reveal=lambda n: "v") == "v"
    with pytest.raises(RunbookError, match="unknown filter 'upper'"):
        render("{{ x | upper }}", {"x": "1"}, where="w")
    with pytest.raises(RunbookError, match="bad template expression"):
        render("{{ x + 1 }}", {"x": "1"}, where="w")
    s = Secret("T", "hunter22")
    assert str(s) == "***" and "hunter22" not in repr(s) and s.reveal() == "hunter22"


def test_schema_errors_name_step_and_key():
    cases = [
        ([{"name": "a", "apply": "x", "retries": -1}], "step 'a' (steps[0]).retries: must not be negative"),
        ([{"name": "a", "apply": "x", "delay": "soon"}], "step 'a' (steps[0]).delay: must be a number or a {{ variable }}"),
        ([{"name": "a", "apply": {"template": {"dest": "/x"}}}], "exactly one of 'src'"),
        ([{"name": "a", "apply": {"wait-for": {"kube": {"resource": "node/x"}}}}], "exactly one of 'condition' or 'jsonpath'"),
        ([{"name": "a", "apply": {"upload": {"src": "a", "dest": "b", "mode": "rw"}}}], "mode must be an octal string"),
        ([{"name": "a", "probe": "x"}, {"name": "a", "probe": "y"}], "duplicate step name 'a'"),
        ([{"name": "a", "probe": "x", "target": "elsewhere"}], "step 'a' (steps[0]).target: Input should be 'local' or 'remote'"),
    ]
    for steps, message in cases:
        with pytest.raises(RunbookError) as err:
            rb(steps)
        assert message in err.value.message, err.value.message
    with pytest.raises(RunbookError, match="bad secret name 'tok'"):
        rb([{"name": "a", "probe": "x"}], secrets={"tok": {"env": "X"}})
    with pytest.raises(RunbookError, match="needs 'env'"):
        rb([{"name": "a", "probe": "x"}], secrets={"TOK": {}})


def test_wrapped_command_gets_env_from_stdin_and_keeps_the_rest(tmp_path):
    argv = wrap_argv('printf "%s|" "$A" "$B"; cat', timeout=5, sudo=False)
    assert argv[:4] == ["timeout", "-k", "5", "5"] and argv[4:7] == ["/bin/sh", "-c", PREAMBLE]
    out = subprocess.run(argv, input=env_block({"A": "x y", "B": "multi\nline=ok"}) + b"rest\n",
                         capture_output=True, timeout=10)
    assert out.stdout == b"x y|multi\nline=ok|rest\n"
    assert wrap_argv("true", timeout=1.5, sudo=True)[4:7] == ["sudo", "-n", "--"]
    with pytest.raises(UsageError):
        env_block({"BAD-NAME": "x"})


def test_ssh_target_parsing():
    assert SshTarget.parse("root@node1") == SshTarget("root", "node1", 22)
    assert SshTarget.parse("ops@10.0.0.5:2222") == SshTarget("ops", "10.0.0.5", 2222)
    assert SshTarget.parse("ops@[fd00::5]:22") == SshTarget("ops", "fd00::5", 22)
    assert str(SshTarget("ops", "fd00::5", 2200)) == "ops@[fd00::5]:2200"
    for bad in ("ops@", "ops@host:99999", "a b@host"):
        with pytest.raises(UsageError):
            SshTarget.parse(bad)


def test_journal_round_trip_and_atomic_write(tmp_path):
    j = Journal(run_id=Journal.new_run_id("t"), runbook="t", runbook_path="/x", runbook_sha256="0" * 64, target="local",
                connection={}, variables={"a": "1"}, overrides={}, selection={}, state_dir=tmp_path)
    j.steps.append(StepRecord("s1", "changed", attempts=2, output_tail=["line"]))
    j.save()
    assert os.stat(j.path).st_mode & 0o777 == 0o600
    again = Journal.load(tmp_path, j.run_id)
    assert again.to_dict() == j.to_dict()
    assert [p.name for p in tmp_path.iterdir()] == [j.path.name]  # no temp files left


def test_runbooks_config_section_is_validated():
    cfg = parse_runbooks_config({"dir": "/srv/runbooks", "vars": {"k3s_version": "v1.30.0+k3s1"}})
    assert str(cfg.dir) == "/srv/runbooks" and cfg.vars == {"k3s_version": "v1.30.0+k3s1"}
    with pytest.raises(ConfigError, match="runbooks.directory"):
        parse_runbooks_config({"directory": "/x"})


def test_config_file_vars_and_dir_are_used(tmp_path, drkit):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "hello.yaml").write_text(yaml.safe_dump({
        **BASE, "variables": {"who": "world", "k3s_version": "v0"},
        "steps": [{"name": "greet", "target": "local", "apply": "echo hello {{ who }} {{ k3s_version }}"}]}))
    config = tmp_path / "drkit.yaml"
    config.write_text(yaml.safe_dump({"repository": {"url": str(tmp_path / "repo")},
                                      "runbooks": {"dir": str(tmp_path / "mine"), "vars": {"k3s_version": "v9"},
                                                   "state_dir": str(tmp_path / "state")}}))
    config.chmod(0o600)
    r = drkit("-c", config, "runbook", "list")
    assert r.code == 0 and "hello" in r.out and "rebuild-node" in r.out
    r = drkit("-c", config, "runbook", "run", "hello", "--var", "who=ops")
    assert r.code == 0, r.text
    assert "| hello ops v9" in r.out
    assert Journal.latest(tmp_path / "state").variables == {"who": "ops", "k3s_version": "v9"}
    config.write_text(yaml.safe_dump({"repository": {"url": "/r"}, "runbooks": {"dirs": ["/x"]}}))
    r = drkit("-c", config, "runbook", "list")
    assert r.code == 2 and "runbooks.dirs" in r.err
    r = drkit("runbook", "show", "no-such-runbook")
    assert r.code == 2 and "no runbook named 'no-such-runbook'" in r.err and "rebuild-node" in r.err
