"""Hydra's command line made safe: unknown keys, empty values, sweeps without ``-m`` and values Hydra
cannot parse are refused (or quoted) in one line before Hydra starts; an unused run folder is removed."""

from __future__ import annotations

import difflib
import re
import shlex
import shutil
from pathlib import Path

from mobilevit_torch.cli.errors import fail


def check_overrides(argv: list[str], keys: list[str], groups: dict[str, list[str]]) -> list[str]:
    """Refuse an unknown ``key=value`` (or config group option) before Hydra starts, with one line
    naming it and the closest key; Hydra's own answer is a paragraph. ``keys``: every settable dotted
    key; ``groups``: each config group's options (``model``: ``s``, ``xs``, ``xxs``).

    Returns the arguments to hand to Hydra: ``argv`` with each value Hydra's override grammar cannot
    read quoted for it (see :func:`quote_for_hydra`). Hydra's own answers, a paragraph or a traceback, are
    also replaced by one line for an empty value (``checkpoint=$UNSET``), a group set to ``null`` and a
    sweep (``format=onnx,tflite``) without ``-m``."""
    multirun = any(arg in ("-m", "--multirun") for arg in argv)
    for arg in argv:
        if arg.startswith("~"):  # Hydra deletes the key: a required one fails later, deep in the command
            key = arg[1:].split("=", 1)[0]
            if key != "hydra" and not key.startswith("hydra."):
                fail(f"{arg} deletes the setting {key!r}: give {key}=VALUE instead, or leave it out for its default", 2)
            continue
        if arg.startswith("-") or "=" not in arg:
            continue  # Hydra's flags (--cfg job, -m, --help) and their values
        key, value = arg.split("=", 1)
        key = key.lstrip("+")
        if key == "hydra" or key.startswith("hydra."):
            continue
        if value == "":  # Hydra reads it as '': a path would become "."
            fail(f"{key}= has no value (an unset shell variable?): give {key}=VALUE, or leave {key}= out", 2)
        options = groups.get(key)
        for choice in value.split(",") if options is not None else []:  # -m sweeps: model=xxs,xs
            if choice not in options:
                close = difflib.get_close_matches(choice, options, n=1)
                hint = f" (did you mean {key}={close[0]}?)" if close else ""
                fail(f"unknown {key} {choice!r}{hint}: choose {key}={'|'.join(options)}", 2)
        if key in keys or key in groups:
            continue
        # recipe.lr for lr, then the closest spelling (data.batch_size for data.batchsize)
        close = [k for k in keys if k.endswith("." + key)] or difflib.get_close_matches(key, keys, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"options: {', '.join(keys)}"
        fail(f"unknown option {key!r} ({hint})", 2)
    quoted = [quote_for_hydra(arg) for arg in argv]
    if not multirun:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parser = OverridesParser.create()
        for arg in quoted:
            if not arg.startswith("-") and "=" in arg and parser.parse_overrides([arg])[0].is_sweep_override():
                key, value = arg.split("=", 1)
                in_hydra = _hydra_quoted(value, quote='"')
                quote = f"; if the comma is part of the value, quote it: {key}='{in_hydra}'"
                fail(f"{arg} is a sweep, one run per value: add -m to run them{'' if key in groups else quote}", 2)
    return quoted


def quote_for_hydra(arg: str) -> str:
    """``key=value`` as Hydra can read it: quoted when Hydra cannot read the value as written.

    Hydra's grammar takes an unquoted value as ASCII letters, digits and a few punctuation marks, so a
    path such as ``checkpoint=runs/été (1)/best.pt`` (or ``~/runs/best.pt``, or one holding ``=`` or
    ``#``) is a parse error there. Such a value is text whatever it holds, so it is handed on quoted
    and reaches the program as typed. A value that looks like a broken list, dict or quoted string
    (``[160,192``) is not guessed at: it is refused in one line that shows the quoted form.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    if arg.startswith("-") or "=" not in arg:
        return arg
    parser = OverridesParser.create()
    try:
        parser.parse_overrides([arg])
        return arg
    except OverrideParseException as error:
        reason = str(error).splitlines()[0]
    key, value = arg.split("=", 1)
    quoted = f"{key}={_hydra_quoted(value)}"
    if not value.startswith(("[", "{", "'", '"')):
        try:
            parser.parse_overrides([quoted])
            return quoted
        except OverrideParseException:
            pass
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]  # quoted already, but not as Hydra reads quotes: show how
    if "'" in value:
        in_bash = shlex.quote(f"{key}={_hydra_quoted(value)}")
    else:  # the usual form: Hydra's double quotes inside the shell's single quotes
        in_hydra = _hydra_quoted(value, quote='"')
        in_bash = f"{key}='{in_hydra}'"
    fail(f"Hydra cannot read {arg} ({reason}); if the value is text, quote it: {in_bash}", 2)
    return arg  # not reached: fail exits


def _hydra_quoted(value: str, quote: str | None = None) -> str:
    """``value`` as a quoted string of Hydra's grammar: the quote character escaped inside it, and
    backslashes doubled where they precede a quote (only there are they special)."""
    if quote is None:
        quote = '"' if "'" in value and '"' not in value else "'"
    body = re.sub(r"(\\*)(" + re.escape(quote) + "|$)", lambda m: m[1] * 2 + ("\\" + m[2] if m[2] else ""), value)
    return quote + body + quote


def drop_unused_run_dir(folder: Path) -> None:
    """Remove Hydra's run folder when the command left nothing in it but a ``.hydra/`` record, and the
    folders above it that are then empty, up to the working directory (Hydra makes them all before the
    entry point runs: a refused command, or one whose files went elsewhere, leaves no trace)."""
    cwd = Path.cwd().resolve()
    folder = folder.resolve()
    while folder != cwd and folder.is_dir() and {path.name for path in folder.iterdir()} <= {".hydra"}:
        try:
            shutil.rmtree(folder)
        except OSError:
            return
        if cwd not in folder.parents:  # outside the working directory: only the run folder itself
            return
        folder = folder.parent
