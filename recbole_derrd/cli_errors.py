"""Command-line error reporting shared by the plugin's commands.

A user's mistake (a bad key or value, a missing, refused or unreadable file) is one line on
stderr and exit status 2; anything else is a bug and keeps its traceback.  ``--debug`` shows
the traceback of a user error too.  The Python API raises; only the commands catch.
"""

import sys

from recbole_derrd.checkpoints import CheckpointError

#: what a user's input can cause; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, PermissionError, NotADirectoryError, CheckpointError,
               FloatingPointError)


def run_reporting_user_errors(run, prog="recbole-derrd", debug=False):
    """``run()``, with a user error turned into one line and exit status 2."""
    if debug:
        return run()
    try:
        return run()
    except USER_ERRORS as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        sys.stderr.write("%s: error: %s (--debug shows the traceback)\n" % (prog, message))
        raise SystemExit(2)
    except KeyboardInterrupt:
        sys.stderr.write("%s: interrupted; the files written so far are kept\n" % prog)
        raise SystemExit(130)
