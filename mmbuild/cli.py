"""The ``mmbuild`` command line (also ``python -m mmbuild``).

This release answers ``--version`` and ``--help``; the subcommands ``build``, ``run``,
``inspect``, ``compare`` and ``profile`` of API.md are listed in the help and refused with exit
status 2 and a one-line message until they are available. Example::

    $ mmbuild --version
    mmbuild 0.1.0 (isa=avx2 (8 lanes, int8 vpmaddwd) cpu=znver3 ...)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

_COMMANDS = {
    "build": "build a model file from a network (python file:function or .onnx)",
    "run": "run a model file on .npy inputs",
    "inspect": "print a model file's steps, precisions and kernels",
    "compare": "per-layer error against float32 (and onnxruntime)",
    "profile": "latency and per-step time of a model file",
}


def _parser() -> argparse.ArgumentParser:
    epilog = "commands (not available in this release yet):\n" + "\n".join(
        f"  {name:<9} {what}" for name, what in _COMMANDS.items()
    )
    parser = argparse.ArgumentParser(
        prog="mmbuild",
        description="A mixed-precision network builder for the CPU, in the style of MagicMind.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="store_true", help="print the version and the CPU")
    parser.add_argument("command", nargs="?", help="one of: " + ", ".join(_COMMANDS))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    parser = _parser()
    args, _ = parser.parse_known_args(argv)
    if args.version:
        import mmbuild
        from mmbuild.kernels.cpu import features

        print(f"mmbuild {mmbuild.__version__} ({features.describe()})")
        return 0
    if args.command is None:
        parser.print_help()
        return 0
    known = args.command in _COMMANDS
    what = "is not available in this release yet" if known else "is not a command"
    print(f"mmbuild: {args.command!r} {what}; see mmbuild --help", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
