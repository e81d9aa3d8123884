"""``python -m drkit``: the drkit program.

The quiet Ctrl-C handler of :mod:`drkit` is installed here too: while ``python -m``
imports the package, ``sys.argv[0]`` is still ``-m``, so ``drkit/__init__.py`` cannot
tell that this process is the program, and a Ctrl-C while the command line loads would
otherwise print a traceback."""

import signal

from drkit import _quiet_interrupt

signal.signal(signal.SIGINT, _quiet_interrupt)

from drkit.cli import main  # noqa: E402 - after the handler: loading the command line takes a while

main()
