"""Durations, sizes and fractions: one grammar for config checks and commands alike.

A value the config check accepts is the value the command later applies, because both
call the functions here (``schedule.prune.keep.within`` and ``drkit forget
--keep-within`` go through :func:`parse_keep_within`; ``schedule.verify.subset`` and
``drkit verify --read-data-subset`` through :func:`parse_fraction`).

Durations
---------
One or more ``<number><unit>`` terms, largest unit first, each unit at most once, no
spaces: ``7d``, ``2w3d``, ``1y6M``, ``1h30m``, ``1.5h``, ``90s``, ``500ms``. The number
is whole or decimal. Units are case-sensitive:

====  ==========================  ====  =========
``y``  year = 365 days (fixed)    ``h``  hour
``M``  month = 30 days (fixed)    ``m``  minute
``w``  week = 7 days              ``s``  second
``d``  day = 24 hours             ``ms`` millisecond
====  ==========================  ====  =========

This is restic's ``--keep-within`` grammar (``1y2m3d4h``) with one difference, the
one that matters: **``M`` is months and ``m`` is minutes** (as in systemd and Go),
because schedules count in minutes (``every: 15m``). Restic writes months as ``m``;
so that a restic-style value never silently means minutes, a value where ``m`` can
be restic's month is refused with a hint: ``m`` together with ``y`` or ``M`` unless
right after hours (``1y6m`` is refused, ``1y2h30m`` is not), or ``m`` before a larger
unit (``6m15d``). For retention
(:func:`parse_keep_within`) a value in minutes alone (``6m``) is refused as well: it is
what a restic user writes for six months, and minutes of retention are never meant.
Months and years are fixed lengths (30 and 365 days), not calendar months.

Sizes
-----
``<number>[unit]`` with binary units ``B``, ``KiB``, ``MiB``, ``GiB``, ``TiB`` (and
``K``/``M``/``G``/``T`` for the same powers of 1024, as restic's ``--pack-size``-style
options do), decimal ``kB``, ``MB``, ``GB``, ``TB`` (powers of 1000). A bare number is
bytes. :func:`format_size` prints sizes in binary units.

Fractions
---------
``10%``, ``0.25`` or ``1/8`` (a share of a whole): more than 0, at most 1 (100%).
"""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Annotated

from pydantic import BeforeValidator

# --- durations ---------------------------------------------------------------------

_DAY = 86400.0
DURATION_UNITS: dict[str, float] = {
    "y": 365 * _DAY,
    "M": 30 * _DAY,
    "w": 7 * _DAY,
    "d": _DAY,
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 0.001,
}
"""Seconds per duration unit, largest first (the order terms must come in)."""

_ORDER = list(DURATION_UNITS)
_TERM = re.compile(r"(\d+(?:\.\d+)?)(ms|[yMwdhms])")
_EXAMPLES = "e.g. 30s, 15m, 1h30m, 6h, 7d, 2w3d, 6M, 1y"
_MONTH_HINT = "m is minutes, M is months (restic's 1y6m is 1y6M here)"


def _terms(text: str, original: object) -> list[tuple[float, str]]:
    terms: list[tuple[float, str]] = []
    pos = 0
    for m in _TERM.finditer(text):
        if m.start() != pos:
            break
        terms.append((float(m.group(1)), m.group(2)))
        pos = m.end()
    if not text or pos != len(text):
        bad = re.search(r"[A-Za-z]+", text[pos:])
        if text.isdigit() or (text and re.fullmatch(r"\d+(?:\.\d+)?", text)):
            raise ValueError(f"invalid duration {original!r}: give a unit ({_EXAMPLES})")
        if bad and bad.group(0) not in DURATION_UNITS:
            raise ValueError(
                f"invalid duration {original!r}: unknown unit {bad.group(0)!r}; units are y M w d h m s ms "
                f"(case-sensitive: {_MONTH_HINT})"
            )
        raise ValueError(f"invalid duration {original!r}: expected {_EXAMPLES}")
    return terms


def parse_duration(text: str) -> timedelta:
    """The duration *text* means (see the module doc); ValueError with a one-line
    reason otherwise (unknown or repeated unit, wrong order, no unit, negative,
    a restic-style month written ``m``)."""
    if not isinstance(text, str):
        raise ValueError(f"invalid duration {text!r}: expected text like {_EXAMPLES}")
    stripped = text.strip()
    if stripped.startswith("-"):
        raise ValueError(f"invalid duration {text!r}: a duration cannot be negative")
    terms = _terms(stripped, text)
    units = [u for _, u in terms]
    if "m" in units and ("y" in units or "M" in units) and units[units.index("m") - 1] != "h":
        raise ValueError(f"ambiguous duration {text!r}: {_MONTH_HINT}")
    for (_, a), (_, b) in zip(terms, terms[1:], strict=False):
        if _ORDER.index(a) >= _ORDER.index(b):
            if a == "m" and _ORDER.index(b) < _ORDER.index("m"):
                raise ValueError(f"ambiguous duration {text!r}: {_MONTH_HINT}")
            raise ValueError(f"invalid duration {text!r}: units go largest first, each once ({_EXAMPLES})")
    return timedelta(seconds=sum(n * DURATION_UNITS[u] for n, u in terms))


def duration_seconds(value: object) -> float:
    """Seconds for a config value: a number (YAML ``90``, or the text ``"90"``) is
    seconds; text goes through :func:`parse_duration`. Booleans, negatives and
    everything else raise ValueError."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration ({_EXAMPLES})")
    if isinstance(value, (int, float)):
        if value < 0 or not math.isfinite(value):
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str) and value.strip().isdigit():
        return float(value.strip())
    if isinstance(value, str):
        return parse_duration(value).total_seconds()
    raise ValueError(f"invalid duration {value!r}: expected {_EXAMPLES}")


def parse_keep_within(text: object) -> timedelta:
    """A retention window (``keep.within`` in the schedule, ``forget --keep-within``).

    :func:`parse_duration`, and more than zero, and not in minutes alone: ``6m`` is
    six months in restic, and a window of minutes is never what a retention policy
    means (write ``1h30m`` if it really is)."""
    if not isinstance(text, str):
        raise ValueError(f"invalid duration {text!r}: give a unit ({_EXAMPLES})")
    value = parse_duration(text)
    if [u for _, u in _terms(text.strip(), text)] == ["m"]:
        raise ValueError(f"ambiguous retention {text!r}: {_MONTH_HINT}; a window in minutes alone is refused")
    if value <= timedelta(0):
        raise ValueError(f"invalid duration {text!r}: a retention window must be longer than zero")
    return value


def format_duration(seconds: float) -> str:
    """``3600 -> '1h'``, ``5400 -> '1h30m'``, ``0.5 -> '0.5s'`` (days at most; whole
    seconds above a minute). The output parses back with :func:`parse_duration`."""
    if seconds < 60 and not float(seconds).is_integer():
        return f"{seconds:.1f}s"
    rest = int(round(seconds))
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts) or "0s"


Duration = Annotated[float, BeforeValidator(duration_seconds)]
"""A pydantic field type: a duration in seconds, parsed by :func:`duration_seconds`."""

# --- sizes -------------------------------------------------------------------------

SIZE_UNITS: dict[str, int] = {
    "": 1, "B": 1,
    "K": 1024, "KiB": 1024, "M": 1024**2, "MiB": 1024**2, "G": 1024**3, "GiB": 1024**3, "T": 1024**4, "TiB": 1024**4,
    "kB": 1000, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4,
}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([A-Za-z]*)")


def parse_size(value: object) -> int:
    """Bytes for ``4096``, ``"512KiB"``, ``"16M"``, ``"1.5GiB"``, ``"10GB"`` (see the
    module doc); ValueError otherwise (negative, unknown unit, a fraction of a byte)."""
    if isinstance(value, bool):
        raise ValueError(f"invalid size {value!r}: expected e.g. 512KiB, 16MiB, 1GiB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    m = _SIZE.fullmatch(value.strip()) if isinstance(value, str) else None
    if m is None or m.group(2) not in SIZE_UNITS:
        raise ValueError(f"invalid size {value!r}: expected e.g. 512KiB, 16MiB, 1GiB, 10GB (units: {', '.join(u for u in SIZE_UNITS if u)})")
    size = float(m.group(1)) * SIZE_UNITS[m.group(2)]
    if not size.is_integer():
        raise ValueError(f"invalid size {value!r}: not a whole number of bytes")
    return int(size)


def format_size(n: float) -> str:
    """``512 -> '512 B'``, ``1536 -> '1.5 KiB'`` (binary units, up to TiB)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


# --- fractions ---------------------------------------------------------------------


def parse_fraction(text: object) -> float:
    """``'10%' -> 0.1``, ``'0.25' -> 0.25``, ``'1/8' -> 0.125``; ValueError (saying
    "percentage") unless it is more than 0 and at most 1 (100%)."""
    raw = str(text).strip() if isinstance(text, (str, int, float)) and not isinstance(text, bool) else ""
    try:
        if raw.endswith("%"):
            value = float(raw[:-1]) / 100
        elif "/" in raw:
            n, d = raw.split("/", 1)
            value = int(n) / int(d)
        else:
            value = float(raw)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"invalid percentage {text!r}: expected e.g. 10%, 0.1 or 1/8") from None
    if not (math.isfinite(value) and 0 < value <= 1):
        raise ValueError(f"invalid percentage {text!r}: must be more than 0% and at most 100%")
    return value
