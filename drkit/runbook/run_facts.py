"""Runbook variables taken from one backup run (the runbook's ``backup_run:`` header).

What belongs to a backup run (K3s version, secrets-encryption, node name, datastore
kind, the server token) is read from that run's metadata, not typed in::

    backup_run:
      variable: run                    # --var run=latest|RUN-ID
      require: [k3s-node]              # source types the run must hold
      facts:                           # variable: run metadata key
        k3s_version: {key: k3s_version, newer: true}
        secrets_encryption: {key: secrets_encryption}
      token_secret: K3S_TOKEN          # if given, it must be the run's token

:func:`run_overrides` turns the run into variable values. A ``--var`` that contradicts
the run is refused with the reason: another value for a fact, or, for a ``newer`` fact
(a version), an older minor than the run's (a datastore is only readable by the same or
a newer minor; a newer patch or minor is allowed). The run variable itself becomes the
full run id, so ``drkit runbook resume`` continues with the same run.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from drkit.errors import Refused
from drkit.runbook.model import Runbook
from drkit.services.backup_run import BackupRunInfo

_MINOR = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?")


def fact_value(value: Any) -> str | None:
    """A run-metadata value as a runbook variable ('true'/'false' for booleans); None when unknown."""
    if value is None or value == "unknown":
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _version(text: str) -> tuple[int, int, int] | None:
    m = _MINOR.match(text.strip())
    return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)) if m else None


def run_overrides(rb: Runbook, run: BackupRunInfo, overrides: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """(*overrides* with the run's facts filled in, notes for the user).

    Raises :class:`Refused` when an override contradicts the run."""
    spec = rb.backup_run
    assert spec is not None
    out = dict(overrides)
    out[spec.variable] = run.run_id
    notes = [f"backup run: {run.describe()}"]
    for var, fact in spec.facts.items():
        recorded = fact_value(run.meta.get(fact.key))
        given = overrides.get(var)
        if recorded is None:
            notes.append(f"the run recorded no {fact.key}: {var} is "
                         + (f"{given!r} (--var)" if given is not None else "the runbook's default"))
            continue
        if given is None or given == recorded:
            out[var] = recorded
            continue
        if fact.newer:
            then, now = _version(recorded), _version(given)
            if then is None or now is None:
                raise Refused(f"--var {var}={given}: not a version like {recorded}")
            if now[:2] < then[:2]:
                raise Refused(
                    f"--var {var}={given} is an older minor than the run's {recorded}: "
                    f"K3s {given} cannot read a datastore written by {recorded}",
                    hint=f"leave {var} unset (the run's {recorded}) or choose the same or a newer minor",
                )
            notes.append(f"{var}: {given} (--var; the run had {recorded}: same or newer minor, allowed)")
            continue
        raise Refused(
            f"--var {var}={given} contradicts the backup run ({run.short_id} recorded {fact.key}={recorded})",
            hint=f"leave {var} unset: it is taken from the run; or pick another run with --var {spec.variable}=ID",
        )
    return out, notes


def check_token(rb: Runbook, run: BackupRunInfo, token: str | None) -> str | None:
    """Refuse (:class:`Refused`) a token that is not the run's; a note when it cannot be
    compared, else None. *token* None: none was given (the run's own is used)."""
    from drkit.sources.k3s_common import token_fingerprint

    spec = rb.backup_run
    if spec is None or spec.token_secret is None or token is None:
        return None
    recorded = run.meta.get("token_sha256")
    if not recorded:
        return f"the run recorded no token fingerprint: {spec.token_secret} is used as given"
    if token_fingerprint(token) != recorded:
        raise Refused(
            f"the {spec.token_secret} given is not the server token of backup run {run.short_id}: "
            "its datastore cannot be decrypted with another token",
            hint=f"unset {spec.token_secret} (the runbook then uses the token restored from the run), "
            f"or pick the run that token belongs to with --var {spec.variable}=ID",
        )
    return None
