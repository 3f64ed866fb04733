"""Shared helpers: run contenders alternately in rounds, take medians, print Markdown tables.

A round runs every contender once, in the same order (A B C, A B C, ...), so slow drifts of
the machine (other processes, thermal state, a fake server warming its caches) hit every
contender alike.  Warm-up rounds run first and are thrown away.

Ratios are taken round by round: in each round ``value / floor`` is computed against the
floor's value *of that round*, and the table shows the median of those ratios.  That cancels
most of the noise that a ratio of two medians would keep.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Sequence

__all__ = ["Contender", "Timer", "print_table", "run_rounds", "run_rounds_multi"]

Contender = tuple[str, Callable[[], float]]


def run_rounds(
    contenders: Sequence[Contender],
    rounds: int,
    warmup: int = 1,
    *,
    fmt: str = "{:,.1f}",
    progress: bool = True,
) -> dict[str, list[float]]:
    """Call each contender once per round, alternately; return the measured values by name.

    A contender is a zero-argument callable returning its measurement (users/s, µs, ...).
    """
    multi = run_rounds_multi(
        [(name, lambda m=measure: {"value": m()}) for name, measure in contenders],
        rounds,
        warmup,
        fmt=fmt,
        progress=progress,
    )
    return multi["value"]


def run_rounds_multi(
    contenders: Sequence[tuple[str, Callable[[], dict[str, float]]]],
    rounds: int,
    warmup: int = 1,
    *,
    fmt: str = "{:,.1f}",
    progress: bool = True,
) -> dict[str, dict[str, list[float]]]:
    """Like `run_rounds`, for contenders that return several metrics at once
    (``{"users/s": ..., "client CPU µs/user": ...}``): values by metric, then by name."""
    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    results: dict[str, dict[str, list[float]]] = {}
    for number in range(-warmup, rounds):
        label = "warm-up" if number < 0 else f"round {number + 1}/{rounds}"
        shown = []
        for name, measure in contenders:
            values = measure()
            first = next(iter(values.values()))
            shown.append(f"{name}={fmt.format(first)}")
            if number >= 0:
                for metric, value in values.items():
                    results.setdefault(metric, {}).setdefault(name, []).append(value)
        if progress:
            print(f"  {label}: " + "  ".join(shown), file=sys.stderr, flush=True)
    return results


def round_ratios(values: Sequence[float], floor: Sequence[float]) -> list[float]:
    """``value / floor`` for each round."""
    return [v / f for v, f in zip(values, floor, strict=True)]


def print_table(
    title: str,
    results: dict[str, list[float]],
    *,
    unit: str,
    floor: str | None,
    ratio_label: str = "ratio vs floor",
    fmt: str = "{:,.1f}",
    delta: bool = False,
    notes: Sequence[str] = (),
) -> None:
    """A Markdown table: median, min and max per contender, and the median per-round ratio
    (and, with `delta`, the median per-round difference ``value - floor``)."""
    rounds = len(next(iter(results.values())))
    print(f"\n### {title}\n")
    header = f"| contender | median {unit} | min | max |"
    rule = "|---|---:|---:|---:|"
    if floor is not None:
        header += f" {ratio_label} (median of {rounds} per-round ratios) | ratio range |"
        rule += "---:|---:|"
        if delta:
            header += f" minus floor {unit} |"
            rule += "---:|"
    print(header)
    print(rule)
    for name, values in results.items():
        row = (
            f"| {name} | {fmt.format(statistics.median(values))} "
            f"| {fmt.format(min(values))} | {fmt.format(max(values))} |"
        )
        if floor is not None:
            ratios = round_ratios(values, results[floor])
            row += f" {statistics.median(ratios):.3f}× | {min(ratios):.3f}–{max(ratios):.3f} |"
            if delta:
                diffs = [v - f for v, f in zip(values, results[floor], strict=True)]
                row += f" {fmt.format(statistics.median(diffs))} |"
        print(row)
    for note in notes:
        print(f"\n{note}")
    sys.stdout.flush()


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds`` (perf_counter)."""

    seconds: float = 0.0

    def __enter__(self) -> Timer:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._start
