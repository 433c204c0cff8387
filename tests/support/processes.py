"""Child processes that a test interrupts as a user would."""

from __future__ import annotations

import signal


def ctrl_c_reaches_python() -> None:
    """``preexec_fn`` for a child that the test stops with SIGINT (a user's Ctrl-C).

    A shell that starts a command in the background without job control (``make test &``, a CI runner's
    ``nohup``) starts it with SIGINT ignored, every descendant inherits that, and Python then installs no
    KeyboardInterrupt handler: the child would ignore the test's Ctrl-C and be killed at the timeout. A user
    at a terminal has SIGINT at its default, so the child gets it back here before it starts.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
