"""Argument checks and the pieces of the one command-line grammar (docs/cli.md) shared by the
command lines (`mst`, `uh-train`, `uh-generate`, `uh-eval`, `uh-view`).

Each check is a Typer callback (or parser): a bad value ends the command with a usage error that
names the option and what it accepts (exit code 2), before any work or import of torch. The
grammar's shared pieces: `--workers` (`workers`), `--device auto` (`resolve_device`,
`device_problem`, given the caller's torch), `--version` (`version_option`), the "Examples:"
epilog (`examples`), hidden old spellings (`renamed`) and positionals (`Command`).
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

import typer
from typer.core import TyperCommand

PACKAGE = "unitedhuman"


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
        raise typer.BadParameter(f"{value!r} is not a device (auto, cpu, cuda, cuda:1, mps)")
    return value


def torch_device_or_auto(value: str) -> str:
    """As `torch_device`, or 'auto' (`resolve_device`: CUDA when torch sees a GPU, else the CPU);
    the callback of every --device."""
    return value if value == "auto" else torch_device(value)


def resolve_device(name: str, torch) -> str:
    """--device NAME as a device: 'auto' is 'cuda' when TORCH (the caller's torch module; this
    module imports no torch) sees a CUDA GPU, else 'cpu'; any other name as it is."""
    if name != "auto":
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def device_problem(name: str, torch) -> str | None:
    """Why TORCH (the caller's torch module) cannot run on the device NAME here (one line), or None
    when it can ('auto' always can)."""
    kind = name.split(":")[0]
    if kind == "cuda":
        if not torch.cuda.is_available():
            return (f"--device {name}: torch sees no CUDA GPU here (torch.cuda.is_available() is False); "
                    "use --device cpu, or install a CUDA build of torch on a machine with a GPU")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            return f"--device {name}: there are {torch.cuda.device_count()} CUDA device(s) here, numbered from 0"
    if kind == "mps" and not torch.backends.mps.is_available():
        return f"--device {name}: Apple's MPS backend is not available here; use --device cpu"
    return None


def workers(value) -> int:
    """--workers: a number of processes doing the work besides the main process (0: the main
    process does it alone) or 'auto' (one per CPU core). A Typer parser: returns the number."""
    text = str(value).strip()
    if text == "auto":
        return os.cpu_count() or 1
    try:
        count = int(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a number of processes (0: the main process) or auto "
                                 "(one per CPU core)") from None
    if count < 0:
        raise typer.BadParameter(f"{count} is not a number of processes (0: the main process) or auto "
                                 "(one per CPU core)")
    return count


def package_version() -> str:
    """The installed version of the package, or a note saying it is not installed."""
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return "(version unknown: the package is not installed)"


def version_option(prog: str):
    """The --version flag of the program PROG (an eager option: prints 'PROG VERSION' and exits)."""

    def show(value: bool) -> None:
        if value:
            typer.echo(f"{prog} {package_version()}")
            raise typer.Exit()

    return typer.Option(False, "--version", is_eager=True, callback=show, help="Print the version and exit.")


def examples(*lines: str) -> str:
    """The "Examples:" epilog of a command's help: one command line per paragraph (Typer's rich help
    joins the lines of a paragraph)."""
    return "\n\n".join(["Examples:", *lines])


def _flag(ctx: typer.Context, name: str) -> str:
    param = next(p for p in ctx.command.params if p.name == name)
    return param.opts[0] if param.param_type_name == "option" else param.human_readable_name


def _given(ctx: typer.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


def missing(ctx: typer.Context, name: str) -> Exception:
    """The usage error of a required option left out, for options Typer cannot require itself (a
    group's own options, an option with a hidden old spelling). NAME: the parameter's name."""
    param = next(p for p in ctx.command.params if p.name == name)
    return sys.modules[typer.BadParameter.__module__].MissingParameter(ctx=ctx, param=param)


def renamed(ctx: typer.Context, name: str, old, old_spelling: str, *, required: bool = False):
    """The value of the option whose parameter is NAME, or OLD when the option was given by its
    hidden old spelling OLD_SPELLING (an option or a positional) instead; both given is a usage
    error, and with REQUIRED neither is one too."""
    value = ctx.params[name]
    if old is not None:
        if _given(ctx, name):
            raise typer.BadParameter(f"given twice: {old_spelling} is the old spelling of {_flag(ctx, name)}",
                                     param_hint=_flag(ctx, name))
        value = old
    if required and value is None:
        raise missing(ctx, name)
    return value


class Command(TyperCommand):
    """A Typer command whose hidden positional arguments (old spellings kept for scripts) stay out
    of the usage line, as hidden options stay out of the option list."""

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if not getattr(param, "hidden", False):
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces
