"""The range of every number and the shape of every list a person gives, in one place (the lowest layer).

`mope.validate` builds the CLI's and the job params' rules from `NUMBERS`, `Number` and `name_list`; the
library's public functions (`score`, `evaluate`, `load_task`, `plan` / `Budget`, `prune_model`,
`DistillConfig`, `compression_curve`, `plan_stability`, `interleaved_latency`) check their arguments with
`arguments(where, name=value, …)` against the same rules, so `DistillConfig(steps=0)` and `--steps 0` are
refused by one rule. A library argument must already be a number (text is refused; the CLI parses its text
first); a failure is one MopeError naming the function, the argument and what is allowed.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Sequence

from .errors import MopeError


@dataclass(frozen=True)
class Number:
    """An int or float in [low, high] (low excluded when `above`)."""

    kind: type
    low: float | None = None
    high: float | None = None
    above: bool = False

    def check(self, value, label: str, strict: bool = False):
        """The value as a number in range; with strict (library calls), text is refused rather than parsed."""
        number = _strict_number(value, self.kind) if strict else _as_number(value, self.kind)
        if number is None or not self._in_range(number):
            raise MopeError(f"{label} must be {self.describe()}, got {value!r}")
        return number

    def _in_range(self, number) -> bool:
        if self.low is not None and (number <= self.low if self.above else number < self.low):
            return False
        return self.high is None or number <= self.high

    def describe(self) -> str:
        what = "a whole number" if self.kind is int else "a number"
        if self.kind is int and self.low is not None and self.high is not None:
            return f"{what} from {self.low:,} to {self.high:,}"
        if self.low is not None and self.high is not None:
            return f"{what} in {'(' if self.above else '['}{self.low:g}, {self.high:g}]"
        return f"{what} {'>' if self.above else '≥'} {self.low:g}" if self.low is not None else what


def _as_number(value, kind: type):
    """value as a finite int / float (from a number or its text); None when it is not one."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value) if kind is float else (int(value) if not isinstance(value, float) else value)
    except (ValueError, OverflowError):
        return None
    if kind is int and isinstance(number, float):
        return int(number) if number.is_integer() else None
    return number if math.isfinite(number) else None


def _strict_number(value, kind: type):
    """value when it is already a finite number of the kind (numpy scalars too); None otherwise."""
    wanted = numbers.Integral if kind is int else numbers.Real
    if isinstance(value, bool) or not isinstance(value, wanted) or not math.isfinite(value):
        return None
    return value


def items(value, label: str) -> list:
    """A list given as a list / tuple or as comma-separated text, its text items stripped, empty ones dropped."""
    if isinstance(value, str):
        return [x.strip() for x in value.split(",") if x.strip()]
    if isinstance(value, (list, tuple)) and all(isinstance(x, (str, int, float)) and not isinstance(x, bool)
                                                for x in value):
        return [x.strip() if isinstance(x, str) else x for x in value]
    raise MopeError(f"{label} must be a list (or comma-separated text), got {value!r}")


def name_list(value, allowed: Sequence[str], label: str, aliases: dict[str, str] | None = None,
              empty_ok: bool = False) -> list[str]:
    """Names from `allowed` (aliases mapped, duplicates dropped), given as a list or comma-separated text;
    non-empty unless `empty_ok`."""
    names = [(aliases or {}).get(x, x) for x in items(value, label)]
    bad = [x for x in names if x not in allowed]
    if bad or not (names or empty_ok):
        raise MopeError(f"{label} takes a comma list of {', '.join(allowed)}"
                        + (f"; unknown: {', '.join(map(repr, bad))}" if bad else f"; got {value!r}"))
    return list(dict.fromkeys(names))


COUNT, SOME = Number(int, 1, 10**7), Number(int, 0, 10**7)
EVERY = Number(int, 1, 10**12)  # an interval in steps: a huge one means never (benchmarks pass 10**9)
POSITIVE, WEIGHT = Number(float, 0, 1e6, above=True), Number(float, 0, 1e6)
FRACTION = Number(float, 0, 1, above=True)

NUMBERS: dict[str, Number] = {
    # counts and sizes
    "n": COUNT, "eval_n": COUNT, "calibration_n": COUNT, "steps": COUNT, "checkpoint_every": EVERY,
    "eval_every": EVERY, "group_size": COUNT, "chunk": COUNT, "first_round": COUNT, "iterative": Number(int, 1, 10**6),
    "batch_size": Number(int, 1, 65536), "repeats": Number(int, 1, 10**4), "concurrency": Number(int, 1, 256),
    "threads": Number(int, 1, 1024), "workers": Number(int, 0, 1024), "opset": Number(int, 1, 100),
    "seed": Number(int, 0, 2**32 - 1), "warmup": SOME, "grid_every": SOME, "depth": SOME, "layers": SOME, "heads": SOME,
    "neurons": SOME, "floor": SOME, "batch": Number(int, 1, 65536), "batch_tokens": Number(int, 1, 2**40),
    "resamples": Number(int, 1, 10**6),
    # fractions, rates, weights, times
    "keep": FRACTION, "removed": FRACTION, "lr": POSITIVE, "temperature": POSITIVE, "grad_clip": POSITIVE,
    "max_memory": POSITIVE, "first_table_seconds": POSITIVE, "rescore_margin": Number(float, 1), "weight_decay": WEIGHT, "affinity": WEIGHT,
    "feature": WEIGHT, "hidden": WEIGHT, "contrastive": WEIGHT, "idle_exit": WEIGHT, "seconds": Number(float, 0, 86400),
}


def count_or_fraction(value, label: str, strict: bool = False, also: str = "") -> int | float:
    """A count (a whole number >= 1) or a fraction in (0, 1] (a number with a point: 1.0 is all), e.g. iterative
    pruning's rescore_images; text ('32', '0.25') is parsed unless strict (library calls). `also` names what
    else the caller takes."""
    number = value
    if isinstance(value, str) and not strict:
        text = value.strip()
        number = int(text) if text.isdigit() else _as_number(text, float)
    whole = isinstance(number, numbers.Integral) and not isinstance(number, bool)
    if not (whole and number >= 1 or isinstance(number, float) and 0 < number <= 1):
        raise MopeError(f"{label} must be a count >= 1 or a fraction in (0, 1] (1.0: every image){also}, got {value!r}")
    return number


def arguments(where: str, **values) -> None:
    """Check a library call's numeric arguments by the rules of the same name (`NUMBERS`; None means the
    default and passes): one MopeError like "mope.score: chunk must be a whole number from 1 to …, got 0"."""
    for name, value in values.items():
        if value is not None:
            NUMBERS[name].check(value, f"{where}: {name}", strict=True)
