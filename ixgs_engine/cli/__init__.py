"""The ``ixgs`` command line: one subcommand per job, progress bars, one-line summaries.

The engine's library packages never import this package; each command group is a module here
(``scan``, ``reconstruct``, ``evaluate``, ``experiments``, ``poses``, ``standardize``) whose
handlers import their engine modules lazily, so ``ixgs --help`` stays quick."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ixgs_engine import __version__
from ixgs_engine.cli import evaluate, experiments, poses, reconstruct, scan, standardize
from ixgs_engine.cli.options import Parser, option_names
from ixgs_engine.errors import IXGSError, name_parameters, os_error_fix
from ixgs_engine.progress import for_front_end


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="ixgs",
        description="IXGS: 3-D volumes from a few X-rays at arbitrary C-arm poses (radiative Gaussian splatting).",
    )
    parser.add_argument("--version", action="version", version=f"ixgs {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for group in (scan, reconstruct, standardize, poses, evaluate, experiments):
        group.add_commands(subparsers)
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at each record (not the stream of the first call)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _show_log_lines() -> None:
    """The engine's INFO log lines (preset and estimated time, render backend) on stderr, once."""
    logger = logging.getLogger("ixgs_engine")
    if not any(isinstance(handler, _StderrHandler) for handler in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("ixgs: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def _os_error_line(error: OSError) -> str:
    """One line for a failed file operation: the file, the reason, and what to do."""
    where = f"{error.filename}: " if error.filename else ""
    reason = error.strerror or str(error)
    return f"{where}{reason}; {os_error_fix(error)}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``ixgs`` subcommand. User errors (bad input, a folder that cannot be written, a
    full disk, too little memory) print one line naming what to fix and exit with code 2; a
    cancelled or interrupted run says how to continue and exits 130 (143 for SIGTERM)."""
    from ixgs_engine.reconstruct.trainer import ReconstructionCancelled

    parser = build_parser()
    args = parser.parse_args(argv)
    _show_log_lines()
    prefix = f"ixgs {args.command}"

    def worded(error: Exception) -> str:
        """The library's message, its parameters as this command's flags (a front end words them itself)."""
        return str(error) if for_front_end() else name_parameters(str(error), option_names(parser, args))

    try:
        return int(args.run(args))
    except ReconstructionCancelled as stopped:
        print(f"{prefix}: {worded(stopped)}", file=sys.stderr)
        return stopped.exit_code
    except IXGSError as error:
        print(f"{prefix}: error: {worded(error)}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"{prefix}: error: {_os_error_line(error)}", file=sys.stderr)
        return 2
    except MemoryError:
        print(
            f"{prefix}: error: out of memory; use smaller sizes (views, pixels, voxels) or a machine with more",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return 130
