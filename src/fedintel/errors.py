"""The one root of fedintel's user-facing errors.

Every error a user can act on (a bad config, a missing dataset, a run directory in the wrong state) derives
from :class:`FedintelError`, so the command line catches one class and prints its message as one line.
Each error keeps its historical base too (``ConfigError`` is still a ``ValueError``), so callers that catch
the builtin class keep working.
"""

from __future__ import annotations


class FedintelError(Exception):
    """Base of the errors whose message tells a user what to change."""


class ConfigError(FedintelError, ValueError):
    """A configuration problem a user can fix; the message names the field."""


class RunFailed(FedintelError, RuntimeError):
    """The run stopped early (e.g. diverged); the last good checkpoint is kept."""
