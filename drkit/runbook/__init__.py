"""Replayable runbooks: steps as data that bring a node from bare Ubuntu back to service.

A runbook (``runbooks/*.yaml``, schema in :mod:`drkit.runbook.model`) is an ordered list
of named steps. Each says what state it brings about: a read-only **probe** and an
**apply**. The engine (:mod:`drkit.runbook.engine`) probes, skips what already holds,
applies, and probes again (``until``/``retries``/``delay`` for waits), so that a second
run changes nothing and says so.

- :mod:`~drkit.runbook.plan` resolves variables (``{{ var }}``, strict) and ``when``
  conditions into exactly the commands that will run; ``drkit runbook plan`` prints
  them and touches nothing.
- :mod:`~drkit.runbook.executor` runs them here or on the node over SSH (paramiko,
  host keys verified, ``sudo -n``), with timeouts, live output, secrets passed only
  through stdin.
- :mod:`~drkit.runbook.journal` records every run atomically, so ``drkit runbook
  resume`` continues at the failed step, and never before.
- :mod:`~drkit.runbook.template` keeps secrets out of command lines, journals and output.
"""
