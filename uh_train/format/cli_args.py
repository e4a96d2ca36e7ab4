"""Argument checks shared by the command lines (`mst`, `uh-train`, `uh-generate`, `uh-eval`).

Each check is a Typer callback: a bad value ends the command with a usage error that names the
option and what it accepts (exit code 2), before any work or import of torch.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from pathlib import Path

import typer


def number(low: float | None = None, *, above: bool = False, high: float | None = None) -> Callable:
    """A callback accepting finite numbers >= LOW (> LOW with `above`) and <= HIGH; None passes."""

    def check(value):
        if value is None:
            return value
        ok = math.isfinite(value)
        if ok and low is not None:
            ok = value > low if above else value >= low
        if ok and high is not None:
            ok = value <= high
        if not ok:
            parts = [f"{'>' if above else '>='} {low:g}"] if low is not None else []
            parts += [f"<= {high:g}"] if high is not None else []
            raise typer.BadParameter(f"{value} is not a finite number{' ' + ' and '.join(parts) if parts else ''}")
        return value

    return check


positive = number(0, above=True)
non_negative = number(0)
at_least_one = number(1)


def _writable_place(value: Path) -> None:
    """The nearest existing folder at or above VALUE must be a folder this process can write in (a
    path below a file, or in a read-only folder, is refused before any work)."""
    for place in (value, *value.parents):
        if place.exists():
            if not place.is_dir():
                raise typer.BadParameter(f"{value} is below {place}, which is a file; give a folder to write into")
            if not os.access(place, os.W_OK | os.X_OK):
                raise typer.BadParameter(f"{value} cannot be written ({place} is not writable)")
            return


def folder_to_write(value: Path | None) -> Path | None:
    """An output folder: it may not exist yet, but it must not be a file or below one."""
    if value is not None and value.exists() and not value.is_dir():
        raise typer.BadParameter(f"{value} is a file; give a folder to write into")
    if value is not None:
        _writable_place(value)
    return value


def existing_folder(value: Path | None) -> Path | None:
    """An input folder that must exist."""
    if value is not None and not value.is_dir():
        raise typer.BadParameter(f"{value} is not an existing folder")
    return value


def file_to_write(value: Path | None) -> Path | None:
    """An output file: it may not exist yet, but it must not be a folder."""
    if value is not None and value.is_dir():
        raise typer.BadParameter(f"{value} is a folder; give the file to write")
    if value is not None:
        _writable_place(value.parent)
    return value


def power_of_two(value: int | None) -> int | None:
    """A patch resolution r: a power of two from 8 to 4096 (the networks halve it down to 4 px)."""
    if value is not None and not (8 <= value <= 4096 and value & (value - 1) == 0):
        raise typer.BadParameter(f"{value} is not a power of two from 8 to 4096 (e.g. 64, 256)")
    return value


def torch_device(value: str) -> str:
    """'cpu', 'cuda', 'cuda:N', 'mps' (checked by name; availability is checked where it is used)."""
    if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", value):
        raise typer.BadParameter(f"{value!r} is not a device (cpu, cuda, cuda:1, mps)")
    return value


def torch_device_or_auto(value: str) -> str:
    """As `torch_device`, or 'auto' (a GPU when there is one)."""
    return value if value == "auto" else torch_device(value)
