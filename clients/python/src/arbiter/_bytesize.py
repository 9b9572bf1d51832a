"""Byte counts written the way operators write them: ``80GiB``, ``24 GB``, ``512MiB``.

The same units as the Rust ``arbiter::ByteSize`` (src/bytesize.rs), so a size that works on
the supervisor's command line works here: binary units (KiB, MiB, GiB, TiB, and the bare
K, M, G, T) because NVML reports binary sizes, decimal ones (KB, MB, GB, TB) because GPU
vendors advertise those. Case does not matter; a fraction (``1.5GiB``) is rounded to the
nearest byte.
"""

from __future__ import annotations

from typing import Union

#: What every function that takes a size accepts: a number of bytes, or a string with a unit.
Bytes = Union[int, str]

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kib": 1 << 10,
    "kb": 1_000,
    "m": 1 << 20,
    "mib": 1 << 20,
    "mb": 1_000_000,
    "g": 1 << 30,
    "gib": 1 << 30,
    "gb": 1_000_000_000,
    "t": 1 << 40,
    "tib": 1 << 40,
    "tb": 1_000_000_000_000,
}

_LIMIT = 1 << 64


def parse_bytes(size: Bytes) -> int:
    """A size as a number of bytes: an int as it is, a string such as ``"8GiB"`` read with
    the supervisor's units. Raises ValueError saying what to write instead."""
    if isinstance(size, bool):
        raise TypeError("a byte size is an int or a string such as '8GiB', not a bool")
    if isinstance(size, int):
        if size < 0:
            raise ValueError(f"{size} is not a byte size: it cannot be negative")
        if size >= _LIMIT:
            raise ValueError(f"{size} is too large: at most 16 EiB")
        return size
    if not isinstance(size, str):
        raise TypeError(f"a byte size is an int or a string such as '8GiB', not {type(size).__name__}")
    text = size.strip()
    if not text:
        raise ValueError("empty byte size: write a number with a unit, such as 24GiB")
    split = len(text)
    for i, c in enumerate(text):
        if not (c.isascii() and (c.isdigit() or c == ".")):
            split = i
            break
    number, unit = text[:split], text[split:].strip().lower()
    if not number:
        raise ValueError(f"`{size}` is not a byte size: write a number with a unit, such as 24GiB or 512MiB")
    if unit not in _UNITS:
        raise ValueError(f"unknown unit `{unit}` in `{size}`: use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB")
    factor = _UNITS[unit]
    if number.isdigit():
        value = int(number) * factor
    else:
        try:
            value = round(float(number) * factor)
        except ValueError:
            raise ValueError(
                f"`{size}` is not a byte size: write a number with a unit, such as 24GiB or 512MiB"
            ) from None
    if value >= _LIMIT:
        raise ValueError(f"`{size}` is too large: at most 16 EiB")
    return value


_WRITTEN = (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10))


def format_bytes(n: int) -> str:
    """The supervisor's way of showing a size: the largest binary unit that keeps at least
    one whole unit, two decimals at most (``1.5GiB``, ``612MiB``, ``1000B``)."""
    for name, unit in _WRITTEN:
        if n >= unit:
            text = f"{n / unit:.2f}".rstrip("0").rstrip(".")
            return f"{text}{name}"
    return f"{n}B"
