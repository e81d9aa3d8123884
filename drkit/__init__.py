"""drkit: disaster recovery and backup for a single-node K3s GitOps platform."""

import os as _os
import sys as _sys

__version__ = "0.1.0"


def _quiet_interrupt(signum: int, frame: object) -> None:
    """Ctrl-C while the command line is still loading: nothing has started, so there
    is nothing to clean up; say so and leave with 130, without a traceback."""
    _os.write(2, b"interrupted\n")
    _os._exit(130)


# Only when this process is the drkit program (console script or ``python -m drkit``),
# never when a library user or a test runner imports drkit. drkit.cli.app.main puts
# Python's own handler back before it runs anything (Ctrl-C then unwinds: locks released,
# temporaries removed, exit 130).
if _sys.argv and (_os.path.basename(_sys.argv[0]) == "drkit" or _sys.argv[0].endswith(_os.path.join("drkit", "__main__.py"))):
    import signal as _signal

    _signal.signal(_signal.SIGINT, _quiet_interrupt)
