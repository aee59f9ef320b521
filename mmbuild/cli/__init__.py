"""The ``mmbuild`` command line: build, run, inspect, compare, profile (docs/cli.md).

Each subcommand is a thin layer over the Python API (``Builder``, ``Calibrator``,
``Model.get_layer_report`` / ``get_error_report``, ``Context.profile``, the reports'
``to_json`` / ``to_csv``). Exit status: 0 success, 1 the work failed (an ``MMError``, or a bound
of ``compare`` not met), 2 the command line is wrong; the error is one line on stderr, with the
traceback only under ``-v``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Sequence

from mmbuild.errors import MMError

EXIT_FAILURE = 1
EXIT_USAGE = 2

_EPILOG = """examples:
  mmbuild build model.onnx -o model.mm --precision qint8_mixed_float16 --calib images/
  mmbuild inspect model.mm
  mmbuild compare model.mm --random --onnx model.onnx --html report.html
  mmbuild profile model.mm --batch 1,8

Run 'mmbuild COMMAND --help' for the options of a command. MMBUILD_PROGRESS=0 or -q turns the
progress bars off.
"""


def _version() -> str:
    from mmbuild import __version__

    return __version__


def make_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    from mmbuild.cli import analyze, build, run
    from mmbuild.cli._common import HelpFormatter

    def logging_options(suppress: bool) -> argparse.ArgumentParser:
        # In the subcommands the defaults are suppressed, so that `mmbuild -v build` keeps -v.
        p = argparse.ArgumentParser(
            add_help=False, argument_default=argparse.SUPPRESS if suppress else None
        )
        p.add_argument(
            "-v", "--verbose", action="count", help="log more (-v info and tracebacks, -vv debug)"
        )
        p.add_argument("-q", "--quiet", action="store_true", help="only errors; no progress bars")
        if not suppress:
            p.set_defaults(verbose=0, quiet=False)
        return p

    parser = argparse.ArgumentParser(
        prog="mmbuild",
        description="Build, calibrate, run, inspect, compare and profile mixed-precision models "
        "for the CPU.",
        epilog=_EPILOG,
        formatter_class=HelpFormatter,
        parents=[logging_options(suppress=False)],
    )
    parser.add_argument("--version", action="version", version=f"mmbuild {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = [logging_options(suppress=True)]  # every subcommand takes -v and -q as well
    build.add_parser(sub, common)
    run.add_parsers(sub, common)
    analyze.add_parsers(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (the console script exits with it)."""
    parser = make_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or an argparse usage error (status 2)
        return int(e.code or 0) if isinstance(e.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help()
        return 0
    _configure_logging(args.verbose, args.quiet)
    from mmbuild.cli._common import UsageError

    try:
        return int(args.func(args))
    except UsageError as e:
        return _fail(args, e, EXIT_USAGE, f"mmbuild {args.command}: error: ")
    except MMError as e:
        return _fail(args, e, EXIT_FAILURE, f"mmbuild {args.command}: error: ")
    except KeyboardInterrupt:
        sys.stderr.write("mmbuild: interrupted\n")
        return 130
    except Exception as e:  # a bug: still one line, unless -v
        hint = "" if args.verbose else " (run with -v for the traceback)"
        return _fail(
            args,
            e,
            EXIT_FAILURE,
            f"mmbuild {args.command}: internal error: {type(e).__name__}: ",
            hint,
        )


def _fail(
    args: argparse.Namespace, error: BaseException, status: int, prefix: str, suffix: str = ""
) -> int:
    if args.verbose:
        traceback.print_exception(error, file=sys.stderr)
    message = " ".join(str(error).split())  # one line
    sys.stderr.write(f"{prefix}{message}{suffix}\n")
    return status


def _configure_logging(verbose: int, quiet: bool) -> None:
    level = (
        logging.ERROR
        if quiet
        else {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    )
    logging.basicConfig(
        level=level, format="mmbuild: %(levelname)s: %(message)s", stream=sys.stderr
    )
