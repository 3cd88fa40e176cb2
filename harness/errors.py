"""The one error type users see: a problem with their input, reported as one line with exit status 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Bad input (config, data, plugin name, path). The CLI prints the message alone and exits with status 2."""

    exit_code = 2


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """A ' (did you mean 'x'?)' suffix for the closest candidate, or the list of valid names when none is close."""
    candidates = sorted(set(candidates))
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.5)
    if close:
        return f" (did you mean '{close[0]}'?)"
    if candidates:
        return f" (expected one of: {', '.join(candidates)})"
    return ""
