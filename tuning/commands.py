"""``egosearch COMMAND ...``: the console script of the search platform's commands, each the same as
``python -m tuning.COMMAND ...``."""

from __future__ import annotations

import sys

from egomodel.commands import dispatch

COMMANDS = {
    "search": ("tuning.search", "run a search space's trials on Ray, tracked in MLflow"),
    "retrain": ("tuning.retrain", "re-train a chosen trial's configuration over several seeds"),
    "report": ("tuning.report", "a reproduction's table beside the paper's figures"),
    "export": ("tuning.export", "a trial's or the champion's model as ONNX for a device"),
    "prepare": ("tuning.prepare", "egomodel's data preparation as Ray tasks across a cluster"),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch("egosearch", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
