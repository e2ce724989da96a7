"""The ``splatkit`` command's entry point: answers ``--help``, ``--help-all`` and ``--version``
without importing PyTorch, and hands every other command line to :func:`splatkit.cli.main`.

Help is printed from ``cli_flags.json``, a table of every command's flags that
:func:`splatkit.cli.flag_table` generates from the same config dataclasses the command line
is parsed with (tyro); a test fails when the table is out of date, and
``python -m splatkit.cli --write-flag-table`` rewrites it.
"""

from __future__ import annotations

import json
import os
import re
import sys
import textwrap
from pathlib import Path

FLAG_TABLE = Path(__file__).with_name("cli_flags.json")
WIDTH = 80
COLUMN = 26  # where descriptions start in the short help


# Thread settings a splatkit process starts with on a machine of at most
# SMALL_MACHINE_CPUS logical CPUs, unless the environment sets them.
# OMP_WAIT_POLICY=PASSIVE: a thread waiting at the end of a parallel region sleeps instead
# of spinning. On an idle 2-core machine steps take the same time (fox at 1/4, 200k
# Gaussians: 139-142 ms either way), but when another process takes one of the cores,
# PyTorch's many small, statically split operators no longer wait a scheduler time slice
# for a preempted partner while the other thread spins: 296 -> 240 ms per step.
# SPLATKIT_PIN_THREADS=1: the compiled kernels keep their threads on distinct CPUs while
# they run (renderer/backends/cpu/parallel.h); a sleeping thread is otherwise often woken
# on its partner's CPU, and the kernels then run on one core: 238-243 -> 215-222 ms per step with
# a busy core, the same 141 ms when idle (docs/backends.md). On larger machines, where a
# sleeping thread's wake-up at every operator may cost more than a lost core, nothing is
# set (not measured there).
THREAD_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE", "SPLATKIT_PIN_THREADS": "1"}
SMALL_MACHINE_CPUS = 4


# Memory setting a splatkit process starts with on Linux, unless the environment sets it.
# THP_MEM_ALLOC_ENABLE=1: PyTorch backs its CPU tensors of 2 MB and more with transparent huge
# pages (madvise), where the kernel allows them ("always" or "madvise" in
# /sys/kernel/mm/transparent_hugepage/enabled). A training step allocates its large tensors
# anew (the SH gradient alone is 55 MB at 300k Gaussians) and glibc maps such blocks fresh
# each time, so with 4 KiB pages every step faulted in ~19,000 pages: fox at 1/4, 305k
# Gaussians, SH degree 3: 122-132 -> 106-108 ms a step, faults 19,000 -> under 700, the same
# peak memory and byte-identical results (docs/backends.md, "Late steps"). No effect on GPU
# memory; THP_MEM_ALLOC_ENABLE=0 turns it off.
MEMORY_DEFAULTS = {"THP_MEM_ALLOC_ENABLE": "1"}


def apply_memory_defaults(environ: dict | None = None, platform: str | None = None) -> None:
    """On Linux (``platform``, default ``sys.platform``), put :data:`MEMORY_DEFAULTS` into
    ``environ`` (default ``os.environ``) where unset; like the thread defaults, only in a
    process that has not loaded PyTorch yet."""
    env = os.environ if environ is None else environ
    if (platform or sys.platform) != "linux":
        return
    for key, value in MEMORY_DEFAULTS.items():
        env.setdefault(key, value)


def apply_thread_defaults(environ: dict | None = None, cpus: int | None = None) -> None:
    """On a machine of at most :data:`SMALL_MACHINE_CPUS` logical CPUs (``cpus``, default
    ``os.cpu_count()``), put :data:`THREAD_DEFAULTS` into ``environ`` (default ``os.environ``)
    where unset. They only take effect in a process that has not loaded PyTorch (its OpenMP
    runtime reads them once, when it loads)."""
    env = os.environ if environ is None else environ
    if (cpus if cpus is not None else os.cpu_count() or 1) > SMALL_MACHINE_CPUS:
        return
    for key, value in THREAD_DEFAULTS.items():
        env.setdefault(key, value)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    code = quick(args)
    if code is not None:
        return code
    apply_thread_defaults()
    apply_memory_defaults()
    from splatkit.cli import main as cli_main
    from splatkit.trainer.distributed import exit_process, joined_group

    code = cli_main(args)
    if joined_group():  # a torchrun rank: leave without the finalisation gloo can abort (see exit_process)
        exit_process(code)
    return code


def quick(args: list[str]) -> int | None:
    """Print the version or a help text for ``args`` and return 0; None when ``args`` asks for neither."""
    if args[:1] in (["--version"], ["-V"]):
        print(version_line())
        return 0
    helps = {"-h", "--help", "--help-all"}
    if not args or args[0] in helps:
        print(top_help(load_table()), end="")
        return 0
    table = load_table()
    if args[0] in table["commands"] and helps & set(args):
        print(command_help(table, args[0], full="--help-all" in args), end="")
        return 0
    return None


def version_line() -> str:
    from importlib.metadata import PackageNotFoundError, version

    from splatkit import __version__

    try:
        torch = version("torch")
    except PackageNotFoundError:
        torch = "not installed"
    return f"splatkit {__version__} (torch {torch})"


def load_table() -> dict:
    return json.loads(FLAG_TABLE.read_text())


def _wrap(text: str, indent: int, width: int = WIDTH) -> list[str]:
    return textwrap.wrap(text, width=width, initial_indent=" " * indent, subsequent_indent=" " * indent) or [""]


def _first_sentence(text: str) -> str:
    first = re.split(r"(?<=[a-z0-9)\]])\. (?=[A-Z\"(])", text, maxsplit=1)[0]
    return first[:-1] if first.endswith(".") and not first.endswith("...") else first


def _flag_name(flag: dict, aliases: bool = False) -> str:
    name = ", ".join([flag["name"], *flag.get("aliases", [])]) if aliases else flag["name"]
    return name if not flag["metavar"] else f"{name} {flag['metavar']}"


def _short_line(flag: dict, max_lines: int = 2) -> list[str]:
    """A flag's name, then the first sentence of its help beside it, in at most ``max_lines``
    lines (and one more when the name is too long to leave room beside it)."""
    name = "  " + _flag_name(flag)
    sentence = _first_sentence(flag["help"])
    text = _wrap(sentence, COLUMN)
    if len(text) > max_lines:
        head = text[: max_lines - 1]
        done = len(" ".join(line.strip() for line in head))
        tail = textwrap.shorten(sentence[done:], WIDTH - COLUMN, placeholder=" ...")
        text = head + [" " * COLUMN + tail]
    if len(name) < COLUMN - 1:
        return [name.ljust(COLUMN) + text[0][COLUMN:]] + text[1:]
    return [name] + text


def top_help(table: dict) -> str:
    about = _first_sentence(table["description"]).removeprefix("splatkit: ")
    lines = [
        "usage: splatkit COMMAND [FLAGS]",
        "",
        textwrap.fill(about[:1].upper() + about[1:], WIDTH),
        "",
        "commands:",
    ]
    for name, cmd in table["commands"].items():
        about = textwrap.shorten(_first_sentence(cmd["description"]), WIDTH - 10, placeholder=" ...")
        lines.append(f"  {name:<8}{about}")
    lines += [
        "",
        "  -V, --version   the version of splatkit (and of torch)",
        "",
        "splatkit COMMAND --help lists the command's common flags; --help-all describes all of them.",
    ]
    return "\n".join(lines) + "\n"


def command_help(table: dict, name: str, full: bool = False) -> str:
    """The help of one command: its common flags, one line each, and a line per group of the
    others; with ``full``, every flag with its whole description and default."""
    cmd = table["commands"][name]
    usage = " ".join(["usage: splatkit", name] + [p["metavar"] for p in cmd["positionals"]])
    lines = [usage + (" [FLAGS]" if cmd["groups"] else ""), ""]
    lines += _wrap(cmd["description"], 0) + [""]
    if cmd["positionals"]:
        lines.append("arguments:")
        for p in cmd["positionals"]:
            lines += _short_line({**p, "name": p["metavar"], "metavar": ""}) if not full else _full(p, p["metavar"])
        lines.append("")
    groups = cmd["groups"]
    if full:
        for group in groups:
            lines.append(
                f"{group['title']}:" if not group["description"] else f"{group['title']}: {group['description']}"
            )
            for flag in group["flags"]:
                lines += _full(flag, _flag_name(flag))
            lines.append("")
        return "\n".join(lines)
    common = cmd["common"]
    by_name = {f["name"]: f for g in groups for f in g["flags"]}
    shown = common or [f["name"] for f in groups[0]["flags"]] if groups else []
    lines.append("common flags:" if common else "flags:" if shown else "no flags")
    for flag in shown:
        lines += _short_line(by_name[flag])
    rest = [(g, [f for f in g["flags"] if f["name"] not in shown]) for g in groups]
    rest = [(g, flags) for g, flags in rest if flags]
    modules = [(g, flags) for g, flags in rest if g.get("module")]
    if modules:  # the plug-in modules' flags in one line, where the first of them was
        flags = [f for _, fl in modules for f in fl]
        merged = {"title": "modules", "description": ", ".join(f["name"] for f in flags), "flags": []}
        at = rest.index(modules[0])
        rest = [r for r in rest if not r[0].get("module")]
        rest.insert(at, (merged, flags))
    if rest:
        lines += ["", f"more flags (splatkit {name} --help-all describes every one):"]
        for group, flags in rest:
            title = group["title"]
            if all(f["name"].startswith(f"--{title}.") for f in flags):
                title = f"--{title}.*"
            elif title == "options":
                title = "other"
            summary = group["description"] or ", ".join(f["name"] for f in flags)
            lines += _short_line({"name": f"{title} ({len(flags)})", "metavar": "", "help": summary}, max_lines=1)
    return "\n".join(lines) + "\n"


def _full(flag: dict, name: str) -> list[str]:
    text = flag["help"] + (f" (default: {flag['default']})" if flag.get("default") not in (None, "") else "")
    return ["  " + name] + _wrap(text, 6)


if __name__ == "__main__":
    sys.exit(main())
