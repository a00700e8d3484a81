"""The command line of every experiment: `python -m core.experiments.<name> key=value ...`.

The overrides are parsed against the experiment's `Config`, which validates every value; a run
record is opened (`--run-dir`, default `runs/<name>-<UTC time>`) and the experiment runs with a
progress bar. Pointing `--run-dir` at an existing record resumes it from its last checkpoint,
provided the overrides give the same config. `--help` lists every key with its default, type and
one-line doc.

Exit status (docs/experiments.md): 0 completed, 3 diverged, 1 failed (an error during the run; the
record is marked `failed` and the traceback printed), 2 user error (a bad key or value, a missing
or unreadable dataset: one line on stderr, no traceback, no run folder created).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

from core.run.config import config_help, parse_overrides

EXIT_CODES = {"completed": 0, "failed": 1, "user_error": 2, "diverged": 3}
USER_ERRORS = (FileNotFoundError, PermissionError, ValueError)  # before the run starts


def user_error(prog: str, err: Exception, code: int = EXIT_CODES["user_error"]) -> NoReturn:
    """The end of every command line (the experiments', `core.diagnose`, `core.theory`,
    `cluster`) on a bad input: one line `<prog>: error: <err>` on stderr, no traceback, exit
    `code` (2: a user error)."""
    print(f"{prog}: error: {err}", file=sys.stderr)
    raise SystemExit(code)


def main(
    experiment: str,
    config_cls: type,
    run: Callable[..., dict],
    argv: Sequence[str] | None = None,
) -> NoReturn:
    """Parse `argv`, open the run record, run with a progress bar, print the summary, exit with
    the status's code (EXIT_CODES)."""
    prog = f"python -m core.experiments.{experiment}"
    parser = argparse.ArgumentParser(
        prog=prog,
        description=sys.modules[run.__module__].__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="keys (key=default  (type)  doc):\n" + config_help(config_cls),
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="the run record (default runs/<name>-<UTC time>); an existing one is resumed",
    )
    args = parser.parse_args(argv)
    try:
        cfg = parse_overrides(config_cls, args.overrides)
    except ValueError as err:
        user_error(prog, err)
    from core.run.record import RunRecord  # torch: not loaded by the other CLIs' `user_error`

    run_dir = args.run_dir or Path("runs") / f"{experiment}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    record = RunRecord(run_dir)
    try:
        summary = run(cfg, record, progress=True)
    except USER_ERRORS as err:
        if record.opened:
            raise  # a failure of the run itself: exit status 1, with the traceback
        user_error(prog, err)
    print(json.dumps({"run_dir": str(run_dir), **summary}, indent=2, default=str))
    raise SystemExit(EXIT_CODES[record.status])
