"""Did the attacker's search converge? Per cell: the best validation accuracy so far against the trial index, which
trial gave the best, whether it came in the last quarter of the trials (the search was still improving), and whether
the selected configuration sits at an edge of the space (a searched range within EDGE_FRACTION of a bound). Either
means the attacker wanted more search, and the leaderboard says so.
"""

from __future__ import annotations

import json
import math
from typing import Any

from harness.results import TrialResult
from harness.space import IntRange, LogUniform, Space, Uniform

EDGE_FRACTION = 0.1  # a selected value this close to a bound (as a fraction of the range) is at the space's edge
LATE_FRACTION = 0.75  # a best found after this fraction of the trials means the search was still improving


def best_so_far(values: list[float | None]) -> list[float | None]:
    """The running best of `values` (None: a trial without a successful result, which keeps the best before it)."""
    out: list[float | None] = []
    best: float | None = None
    for value in values:
        if value is not None and (best is None or value > best):
            best = value
        out.append(best)
    return out


def still_improving(best_index: int, n_trials: int) -> bool:
    """Whether the selected trial (0-based `best_index` of `n_trials`) came in the last quarter of the trials: its
    1-based number is above LATE_FRACTION of the count (of 4 trials the 4th, of 50 the 38th to 50th; a single
    trial is always late: there was no search to converge)."""
    return best_index + 1 > LATE_FRACTION * n_trials


def edge_position(dim: Any, value: Any) -> float | None:
    """Where `value` sits in a searched range, 0 at its low bound and 1 at its high one: in log space for a
    log-uniform (or log int) range, linearly for the others. None for a choice, a fixed value or an empty range."""
    if not isinstance(dim, (LogUniform, Uniform, IntRange)) or dim.high <= dim.low or value is None:
        return None
    if isinstance(dim, LogUniform) or (isinstance(dim, IntRange) and dim.log and dim.low > 0):
        return (math.log(value) - math.log(dim.low)) / (math.log(dim.high) - math.log(dim.low))
    return (float(value) - dim.low) / (dim.high - dim.low)


def search_edges(space: Space, config: dict[str, Any], fraction: float = EDGE_FRACTION) -> list[str]:
    """The searched numeric dimensions whose selected value lies within `fraction` of a bound, as "name:low" or
    "name:high", in the space's order. Choices (e.g. batch size) are not ranges and are not checked."""
    edges = []
    for name, dim in space.items():
        position = edge_position(dim, config.get(name))
        if position is None:
            continue
        if position <= fraction:
            edges.append(f"{name}:low")
        elif position >= 1 - fraction:
            edges.append(f"{name}:high")
    return edges


def search_diagnostics(rows: list[TrialResult], best_index: int, space: Space, config: dict[str, Any]) -> dict:
    """The cell row's `search_*` fields: `rows` are the search trials in the order Tune lists them (the order it
    created them, except that a trial retried after a failure moves to the end: it ran again there), `best_index`
    the selected one, `space` the searched dimensions and `config` the selected configuration."""
    curve = best_so_far([r.val_accuracy if r.status == "ok" else None for r in rows])
    edges = search_edges(space, config)
    return {
        "search_best_so_far": json.dumps(curve),
        "search_best_trial": best_index,
        "search_still_improving": still_improving(best_index, len(rows)),
        "search_at_edge": bool(edges),
        "search_edges": ",".join(edges),
    }
