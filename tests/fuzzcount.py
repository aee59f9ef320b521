"""Outcome counts of the fuzz tests, printed at the end of the run (conftest.py)."""

from __future__ import annotations

from collections import Counter, defaultdict

COUNTS: defaultdict[str, Counter[str]] = defaultdict(Counter)


def count(surface: str, outcome: str) -> None:
    """Record one generated case of ``surface`` and how it ended (``ok``, ``MMError``, ...)."""
    COUNTS[surface][outcome] += 1


def report() -> list[str]:
    return [
        f"{surface}: {sum(c.values())} cases: "
        + ", ".join(f"{k} {v}" for k, v in sorted(c.items()))
        for surface, c in sorted(COUNTS.items())
    ]
