"""Error classes shared by the library and the CLIs.

Library code raises these with a message that says what happened and what to do; the CLIs' single
``main()`` turns each into one line and an exit code (``aidi.cmdline``).
"""

from __future__ import annotations


class AidiError(Exception):
    """Base of every error a user can act on. ``exit_code`` is what the CLIs return for it."""

    exit_code = 1


class UsageError(AidiError):
    """Wrong arguments or a missing config: the command line or a config file needs a fix."""

    exit_code = 2


class NotFoundError(AidiError):
    """A dataset, version, job or file that does not exist."""

    exit_code = 3


class AuthError(AidiError):
    """Credentials were refused; run `hitc init` / `traincli init` with a valid token."""

    exit_code = 4


class ConnectionFailed(AidiError):
    """A server could not be reached."""

    exit_code = 5


class IntegrityError(AidiError):
    """Data failed a checksum or authentication check (corrupt, tampered, or a wrong password)."""

    exit_code = 6
