"""Command-line plumbing shared by every ``sparsekit`` sub-command: output verbosity through
:mod:`logging`, ``--config file.toml`` for ``train``, and the exit codes.

Exit codes (scripts may rely on them):

====  ==============================================================================
0     success
1     runtime or data error (missing dataset, bad values, corrupt checkpoint, divergence)
2     usage error (unknown flag, bad flag value, bad or unknown key in ``--config``)
130   interrupted (Ctrl-C / SIGINT); a run folder can be continued with ``--resume``
====  ==============================================================================

A configuration file is a flat TOML table whose keys are the long option names of ``sparsekit
train``, with ``-`` or ``_`` (``batch-size = 64`` or ``batch_size = 64``); flags given on the
command line override the file.  Paths in it are relative to the working directory.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(ValueError):
    """A bad option value: reported like argparse's errors, exit status 2, before any work."""


logger = logging.getLogger("sparsekit")

#: Options that cannot come from a configuration file.
NOT_IN_CONFIG = ("help", "config", "quiet", "verbose")


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    """Add the ``-q/--quiet`` and ``-v/--verbose`` pair to a sub-command's parser."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true",
                       help="print only warnings and errors")
    group.add_argument("-v", "--verbose", action="store_true",
                       help="also print debug messages (configuration, timings)")


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The sub-command parsers of ``parser`` by name."""
    for action in parser._actions:  # argparse has no public accessor for its sub-parsers
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions
            if a.option_strings and a.dest not in NOT_IN_CONFIG}


def _check_value(key: str, value: Any, action: argparse.Action) -> Any:
    """``value`` from the TOML file as the flag would have parsed it, or ValueError."""
    def one(v):
        kind = action.type
        if kind is int and (isinstance(v, bool) or not isinstance(v, int)):
            raise ValueError(f"{key} must be an integer, got {v!r}")
        if kind is float:
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise ValueError(f"{key} must be a number, got {v!r}")
            return float(v)
        if kind is None and not isinstance(v, str):
            raise ValueError(f"{key} must be a string, got {v!r}")
        if action.choices is not None and v not in action.choices:
            raise ValueError(f"{key} must be one of {list(action.choices)}, got {v!r}")
        return v

    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be true or false, got {value!r}")
        return value
    if isinstance(action.nargs, int):
        if not isinstance(value, list) or len(value) != action.nargs:
            raise ValueError(f"{key} must be a list of {action.nargs} values")
        return [one(v) for v in value]
    if action.nargs in ("+", "*"):
        if not isinstance(value, list) or (action.nargs == "+" and not value):
            raise ValueError(f"{key} must be a list, e.g. {key} = [1000, 1000]")
        return [one(v) for v in value]
    return one(value)


def load_config(path: str | Path, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Read a TOML file of option values for ``parser``.

    Parameters
    ----------
    path : str or Path
        The ``.toml`` file.
    parser : argparse.ArgumentParser
        The sub-command parser whose long options the keys name.

    Returns
    -------
    dict
        ``{dest: value}`` checked against each option's type and choices.

    Raises
    ------
    ValueError
        Unreadable file, invalid TOML, an unknown key (the message lists the known ones) or a
        value of the wrong type.
    """
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the same parser under its PyPI name
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise ValueError("--config needs Python >= 3.11 (tomllib) or: pip install tomli") \
                from None
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path} is not valid TOML: {exc}") from exc
    options = _options(parser)
    values = {}
    for key, value in raw.items():
        dest = key.replace("-", "_")
        if dest not in options:
            known = ", ".join(sorted(d.replace("_", "-") for d in options))
            raise ValueError(f"{path}: unknown key {key!r}; known keys: {known}")
        values[dest] = _check_value(key, value, options[dest])
    return values


def parse_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse ``argv`` with ``--quiet/--verbose`` on every sub-command and ``--config`` on
    ``train``; the configuration file supplies defaults that flags override.  Usage errors
    exit with status 2 (argparse's convention)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    subs = subparsers(parser)
    for sub in subs.values():
        add_common_flags(sub)
    from_file: dict[str, Any] = {}  # values from --config count as given, as flags do
    if "train" in subs:
        subs["train"].add_argument("--config", metavar="FILE.toml",
                                   help="read option values from a TOML file (flags override)")
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--config")
        known, _ = pre.parse_known_args(argv)
        wants_help = any(a in ("-h", "--help") for a in argv[1:])  # help needs no file
        if known.config and argv and argv[0] == "train" and not wants_help:
            try:
                from_file = load_config(known.config, subs["train"])
            except ValueError as exc:
                subs["train"].error(f"--config: {exc}")
            subs["train"].set_defaults(**from_file)
    args = parser.parse_args(argv)
    if args.command in subs:
        args.given = given_options(subs[args.command], argv[1:]) | set(from_file)
    return args


def given_options(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The ``dest`` of every option written in ``argv`` (``--lr 5``, ``--lr=5``, or an
    unambiguous prefix such as ``--hid``), whatever its value: what ``--resume`` compares
    with the run's configuration."""
    strings = parser._option_string_actions  # argparse keeps no public map of option strings
    given = set()
    for token in argv:
        if token == "--":
            break
        if not token.startswith("-") or token == "-" or token[1:2].isdigit():
            continue
        flag = token.split("=", 1)[0]
        action = strings.get(flag)
        if action is None:  # a prefix, as argparse accepts: only when it names one option
            dests = {a.dest for s, a in strings.items() if s.startswith(flag)}
            action = next(a for s, a in strings.items() if s.startswith(flag)) \
                if len(dests) == 1 else None
        if action is not None and action.dest not in NOT_IN_CONFIG:
            given.add(action.dest)
    return given


@contextlib.contextmanager
def quiet_stdout(quiet: bool):
    """With ``quiet``, silence everything a sub-command prints on stdout (stderr stays)."""
    if not quiet:
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"sparsekit: {record.levelname.lower()}: {msg}"
        return msg


def setup_logging(quiet: bool = False, verbose: bool = False) -> logging.Handler:
    """Send the ``"sparsekit"`` logger (and Python warnings) to the terminal.

    INFO and DEBUG lines go to stdout, warnings and errors to stderr.  ``quiet`` keeps only
    warnings and errors, ``verbose`` adds debug messages.  Returns the stdout handler.
    """
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    logger.setLevel(level)
    for handler in list(logger.handlers):
        if getattr(handler, "_sparsekit_cli", False):
            logger.removeHandler(handler)
    out = logging.StreamHandler(sys.stdout)
    out.addFilter(lambda record: record.levelno < logging.WARNING)
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.WARNING)
    for handler in (out, err):
        handler.setFormatter(_Formatter("%(message)s"))
        handler._sparsekit_cli = True
        logger.addHandler(handler)
    logging.captureWarnings(True)
    warnings_logger = logging.getLogger("py.warnings")
    if not any(getattr(h, "_sparsekit_cli", False) for h in warnings_logger.handlers):
        warnings_logger.addHandler(err)
    return out
