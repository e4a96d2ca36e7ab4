"""The one command-line grammar (docs/cli.md), read from the page and checked against every command
of `mst`, `uh-train`, `uh-generate`, `uh-eval` and `uh-view` as Typer builds them: each shared option
has its documented names, commands and defaults; no visible option spells a shared concept another
way; every old spelling is hidden and documented; every program has --version; every help ends
with examples that use the command's own options; `mst --help` lists its commands in pipeline order."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from types import SimpleNamespace

import pytest
import typer
from typer.testing import CliRunner

from mst_pipeline.cli import app as mst
from uh_train.evaluate import app as uh_eval
from uh_train.format import cli_args
from uh_train.generate import app as uh_generate
from uh_train.training.cli import app as uh_train
from uh_train.viewer.cli import app as uh_view

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "cli.md"
PROGRAMS = {"mst": mst, "uh-train": uh_train, "uh-generate": uh_generate, "uh-eval": uh_eval, "uh-view": uh_view}
runner = CliRunner(env={"COLUMNS": "200"})


# --- the commands, as Typer builds them ----------------------------------------------------------


def _walk(cmd, path: str):
    """(path, command object) of CMD and every visible command below it."""
    yield path, cmd
    for name, sub in getattr(cmd, "commands", {}).items():
        if not sub.hidden:
            yield from _walk(sub, f"{path} {name}")


def _own_options(cmd) -> list:
    return [p for p in cmd.params if p.param_type_name == "option" and p.name not in ("help", "version")]


def _runs(cmd) -> bool:
    """A command that does work itself: a leaf, or a group that runs without a subcommand (`uh-train`,
    `uh-generate`)."""
    return not hasattr(cmd, "commands") or bool(getattr(cmd, "invoke_without_command", False) and _own_options(cmd))


ALL = {path: cmd for prog, app in PROGRAMS.items() for path, cmd in _walk(typer.main.get_command(app), prog)}
COMMANDS = {path: cmd for path, cmd in ALL.items() if _runs(cmd)}


def _visible_options(cmd) -> dict[str, object]:
    """Every visible option spelling of CMD (long and short, --x/--no-x both) -> its parameter."""
    out = {}
    for p in cmd.params:
        if p.param_type_name == "option" and not p.hidden:
            for name in [*p.opts, *p.secondary_opts]:
                out[name] = p
    return out


def _hidden(cmd) -> list:
    return [p for p in cmd.params if getattr(p, "hidden", False)]


# --- the grammar, as docs/cli.md writes it -------------------------------------------------------


def _table(heading: str) -> list[list[str]]:
    """The rows (cells) of the first table under the markdown heading HEADING."""
    text = DOC.read_text()
    section = text[text.index(heading):]
    rows = []
    for line in section.splitlines()[1:]:
        if line.startswith("#"):
            break
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip()[1:-1].split("|")])
        elif rows:
            break
    return rows[2:]  # without the header and its rule


def _ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def _commands_of(cell: str) -> set[str]:
    """The commands a cell names: a list of `command`s, "every program", or "every command but `x`, `y`"."""
    if cell == "every program":
        return set(PROGRAMS)
    if cell.startswith("every command"):
        return set(COMMANDS) - set(_ticked(cell))
    return set(_ticked(cell))


def _defaults_of(cell: str, commands: set[str]) -> dict[str, str]:
    """command -> documented default: "`v` (`a`, `b`); `w` (`c`)", a bare "`v`" for every command,
    and "required elsewhere" (None for every command not named)."""
    out = {}
    for value, named in re.findall(r"`([^`]+)` \(([^)]*)\)", cell):
        out |= dict.fromkeys(_ticked(named), value)
    if not out and re.fullmatch(r"`[^`]+`", cell):
        out = dict.fromkeys(commands, _ticked(cell)[0])
    if "required elsewhere" in cell:
        out = {c: out.get(c, "None") for c in commands}
    return out


GRAMMAR = [SimpleNamespace(names=_ticked(r[0]), meaning=r[1], defaults=r[2], commands=_commands_of(r[3]),
                           refused=set(_ticked(r[4])), hidden=r[5]) for r in _table("## Shared options")]
GRAMMAR_NAMES = {name for row in GRAMMAR for name in row.names}


def test_the_grammar_table_reads_and_names_only_commands_that_exist():
    assert {row.names[0] for row in GRAMMAR} >= {"--out", "--device", "--workers", "--batch", "--res", "--size",
                                                 "--n", "--seeds", "--limit", "--version"}
    for row in GRAMMAR:
        assert row.commands, row.names
        assert row.commands <= set(ALL), (row.names, row.commands - set(ALL))


@pytest.mark.parametrize("row", GRAMMAR, ids=[row.names[0] for row in GRAMMAR])
def test_each_shared_option_is_on_exactly_the_documented_commands_with_all_its_names(row):
    having = {path for path, cmd in ALL.items() if set(row.names) & set(_visible_options(cmd))}
    assert having == row.commands, (f"{row.names[0]}: on {sorted(having - row.commands)} without docs/cli.md "
                                    f"saying so; missing from {sorted(row.commands - having)}")
    for path in row.commands:
        options = _visible_options(ALL[path])
        assert set(row.names) <= set(options), (path, row.names)
        assert len({id(options[n]) for n in row.names}) == 1, (path, "the names must be one option")


@pytest.mark.parametrize("row", GRAMMAR, ids=[row.names[0] for row in GRAMMAR])
def test_each_shared_option_has_its_documented_default(row):
    for path, value in _defaults_of(row.defaults, row.commands).items():
        param = _visible_options(ALL[path])[row.names[0]]
        assert str(param.default) == value, (path, row.names[0], param.default, value)


def test_every_device_defaults_to_auto_and_every_program_has_version():
    device = next(row for row in GRAMMAR if row.names[0] == "--device")
    assert _defaults_of(device.defaults, device.commands) == dict.fromkeys(device.commands, "auto")
    assert next(row for row in GRAMMAR if row.names[0] == "--version").commands == set(PROGRAMS)


def test_no_visible_option_spells_a_shared_concept_another_way():
    """A visible option whose name holds a word the grammar refuses for a concept (batch, device,
    workers, res, size, out, …) must be one of the grammar's names."""
    offenders = []
    for path, cmd in ALL.items():
        for name in _visible_options(cmd):
            words = set(name.lstrip("-").split("-"))
            for row in GRAMMAR:
                if words & row.refused and name not in GRAMMAR_NAMES:
                    offenders.append(f"{path} {name} (the grammar says {row.names[0]})")
        for p in cmd.params:  # an output given as a visible positional is the old grammar
            if p.param_type_name == "argument" and not p.hidden and p.name in ("out", "output", "dest"):
                offenders.append(f"{path} positional {p.name.upper()} (the grammar says --out)")
    assert not offenders, offenders


def test_every_command_that_writes_takes_out_and_no_batch_size_is_visible():
    out = next(row for row in GRAMMAR if row.names[0] == "--out")
    for path in set(COMMANDS) - out.commands:
        assert path in ("mst validate", "mst body-model info"), path  # they only read
    for path, cmd in ALL.items():
        assert "--batch-size" not in _visible_options(cmd), path


def test_every_hidden_spelling_is_documented_and_the_documented_ones_are_hidden():
    documented = {}
    for row in GRAMMAR:
        for old, named in re.findall(r"`([^`]+)`(?: positional)? \(([^)]*)\)", row.hidden):
            for path in _ticked(named):
                documented.setdefault(path, set()).add(old)
    found = {}
    for path, cmd in ALL.items():
        for p in _hidden(cmd):
            found.setdefault(path, set()).add(p.opts[0] if p.param_type_name == "option" else p.metavar)
    assert found == documented
    for path, olds in documented.items():  # hidden, and never visible elsewhere under the same command
        assert not olds & set(_visible_options(ALL[path])), path


def test_the_table_of_old_spellings_agrees_with_the_commands():
    for old, now, where in _table("## Hidden old spellings"):
        for path in _ticked(where):
            cmd = ALL[path]
            if old.startswith("`--"):
                (flag,) = _ticked(old)[:1]
                assert flag in {p.opts[0] for p in _hidden(cmd)}, (path, flag)
                assert _ticked(now)[0] in _visible_options(cmd), (path, now)
            elif " OUT" in old:
                assert "OUT" in {p.metavar for p in _hidden(cmd) if p.param_type_name == "argument"}, path
                assert "--out" in _visible_options(cmd), path
            elif " run " in old:
                assert cmd.commands["run"].hidden
            else:
                raise AssertionError(f"cannot read the old spelling {old}")


def test_the_old_spellings_still_work(tmp_path):
    old = runner.invoke(mst, ["synthetic", str(tmp_path / "old"), "--n", "1", "--res", "16"])
    new = runner.invoke(mst, ["synthetic", "--out", str(tmp_path / "new"), "--n", "1", "--size", "16"])
    assert old.exit_code == 0 == new.exit_code, old.output + new.output
    assert sorted(p.name for p in (tmp_path / "old").iterdir()) == sorted(p.name for p in (tmp_path / "new").iterdir())
    both = runner.invoke(mst, ["synthetic", str(tmp_path / "a"), "--out", str(tmp_path / "b")])
    assert both.exit_code == 2 and "given twice" in both.output
    neither = runner.invoke(mst, ["synthetic", "--n", "1"])
    assert neither.exit_code == 2 and "--out" in neither.output
    bad_old = runner.invoke(mst, ["align", str(tmp_path), "--batch-size", "0"])
    assert bad_old.exit_code == 2 and "--batch-size" in bad_old.output  # the error names what was typed


@pytest.mark.parametrize("prog", PROGRAMS)
def test_version_prints_the_programs_name_and_the_package_version(prog):
    result = runner.invoke(PROGRAMS[prog], ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"{prog} {cli_args.package_version()}"


def test_device_auto_is_cuda_when_torch_sees_a_gpu_else_cpu():
    def fake(gpu: bool):
        return SimpleNamespace(cuda=SimpleNamespace(is_available=lambda: gpu, device_count=lambda: int(gpu)),
                               backends=SimpleNamespace(mps=SimpleNamespace(is_available=lambda: False)))

    assert cli_args.resolve_device("auto", fake(True)) == "cuda"
    assert cli_args.resolve_device("auto", fake(False)) == "cpu"
    assert cli_args.resolve_device("cuda:1", fake(False)) == "cuda:1"
    assert cli_args.device_problem("cuda", fake(False)).startswith("--device cuda: torch sees no CUDA GPU")
    assert cli_args.device_problem("cuda:1", fake(True)).startswith("--device cuda:1: there are 1")
    assert cli_args.device_problem("cpu", fake(False)) is None


def test_workers_zero_is_the_main_process_and_auto_one_per_core():
    assert cli_args.workers("0") == 0 and cli_args.workers(3) == 3
    assert cli_args.workers("auto") == (os.cpu_count() or 1)
    for bad in ("-1", "many"):
        with pytest.raises(typer.BadParameter, match="0: the main process"):
            cli_args.workers(bad)


@pytest.mark.parametrize("path", sorted(ALL))
def test_every_help_ends_with_examples_that_use_the_commands_own_options(path):
    cmd = ALL[path]
    epilog = cmd.epilog or ""
    assert epilog.startswith("Examples:"), f"{path} --help has no Examples section"
    lines = [line.strip() for line in epilog.split("\n\n")[1:]]
    assert 1 <= len(lines) <= 3, (path, lines)
    words = path.split()
    for line in lines:
        args = shlex.split(line)
        target, rest = words[0], args[1:]
        assert args[0] == words[0], (path, line)
        example = ALL[target]
        while rest and hasattr(example, "commands") and rest[0] in example.commands:
            target, rest = f"{target} {rest[0]}", rest[1:]
            example = ALL[target]
        if not hasattr(cmd, "commands"):  # a command's examples run that command
            assert target == path, (path, line)
        options = _visible_options(example)
        for arg in rest:
            if arg.startswith("-") and not re.fullmatch(r"-?\d[\d.,]*", arg):
                assert arg.split("=")[0] in options, f"{path}: example {line!r} uses {arg}, which {target} lacks"
    help_text = runner.invoke(PROGRAMS[words[0]], [*words[1:], "--help"]).output
    assert "Examples:" in help_text and lines[0].split()[-1] in help_text, path


def test_uh_train_help_shows_the_training_options_and_their_per_preset_defaults():
    text = " ".join(runner.invoke(uh_train, ["--help"]).output.split())
    for flag in ("--shards", "--out", "--kimg", "--batch", "--device", "--workers", "import-snapshot"):
        assert flag in text, flag
    assert "per preset: paper 25000, small 100, tiny 0.4" in text and "per preset: paper 32, small 16, tiny 8" in text
    missing = runner.invoke(uh_train, ["--out", "somewhere"])
    assert missing.exit_code == 2 and "--shards" in missing.output


def test_mst_lists_its_commands_in_the_documented_pipeline_order():
    stages = _table("**`mst --help` lists its commands in pipeline order**")
    order = [name for _, names in stages for name in _ticked(names)]
    group = typer.main.get_command(mst)
    assert group.list_commands(None) == order
    assert order[0] == "align" and order[-2:] == ["validate", "preview"]
    text = runner.invoke(mst, ["--help"]).output
    positions = [text.index(stage) for stage, _ in stages]
    assert positions == sorted(positions)
