"""Shared command-line plumbing: clear one-line errors instead of tracebacks for bad input."""

from __future__ import annotations

import sys
from collections.abc import Callable

from egomodel.config import ConfigError
from egomodel.data.layout import DataError
from egomodel.model.backbone import WeightsError
from egomodel.training.engine import ResumeError

USER_ERRORS = (ConfigError, DataError, ResumeError, WeightsError, FileNotFoundError, ValueError)


def run_cli(
    main: Callable[[list[str] | None], int], argv: list[str] | None = None, errors: tuple = USER_ERRORS
) -> int:
    """Run a command's ``main``; ``errors`` (bad input) print one line and exit 2, never a traceback."""
    try:
        return main(argv)
    except errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130
