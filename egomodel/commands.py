"""``egomodel COMMAND ...``: the console script of egomodel's commands, each the same as
``python -m egomodel.COMMAND ...``. Also the dispatcher of ``egosearch`` (:func:`dispatch`): light on
purpose, so ``--help`` answers without importing PyTorch."""

from __future__ import annotations

import difflib
import runpy
import sys

COMMANDS = {
    "train": ("egomodel.train", "train one configuration through its stages"),
    "evaluate": ("egomodel.evaluate", "evaluate a checkpoint on the test users"),
    "prepare": ("egomodel.prepare", "raw videos to the GTEA61 layout, with warp flow and motion maps"),
    "export": ("egomodel.export", "a checkpoint as a streaming ONNX step, checked in ONNX Runtime"),
    "visualize": ("egomodel.visualize", "a checkpoint's pictures: curves, attention maps, beta/gamma maps"),
    "cost": ("egomodel.cost", "a configuration's forward GFLOPs and parameters per clip"),
    "weights": ("egomodel.weights", "fetch or check the backbone's ImageNet weights"),
}


def dispatch(prog: str, commands: dict[str, tuple[str, str]], argv: list[str] | None = None) -> int:
    """A console script with sub-commands: ``commands`` maps each name to the module it runs and a
    one-line summary; ``prog NAME ARGS`` runs exactly what ``python -m MODULE ARGS`` runs."""
    argv = sys.argv[1:] if argv is None else list(argv)
    width = max(map(len, commands))
    usage = (f"usage: {prog} COMMAND [ARGS ...]   ({prog} COMMAND --help for its options)\n\ncommands:\n"
             + "\n".join(f"  {name:<{width}}  {summary}" for name, (_, summary) in commands.items()))
    if not argv or argv[0] in ("-h", "--help"):
        try:
            print(usage, file=sys.stdout if argv else sys.stderr)
        except BrokenPipeError:  # `egosearch --help | head -3`: the reader had enough
            sys.stdout = None  # nothing left to flush at exit either
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in commands:
        close = difflib.get_close_matches(name, list(commands), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        print(f"{prog}: unknown command {name!r}{hint}\n\n{usage}", file=sys.stderr)
        return 2
    saved = sys.argv
    sys.argv = [f"{prog} {name}", *rest]
    try:
        runpy.run_module(commands[name][0], run_name="__main__", alter_sys=True)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = saved
    return 0


def main(argv: list[str] | None = None) -> int:
    return dispatch("egomodel", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
