"""The docs read as tests: the project's command lines in Markdown code blocks, parsed by the project's own
argparse parsers without running anything, and the repository paths and anchors the docs name.

A command is found in ```bash / ```sh / ```console / untagged blocks (``\\`` continuations joined, ``$ ``
prompts stripped, ``&&`` ``|`` ``;`` chains split, quoted shell strings such as ``ray exec ... 'cd x && python
-m ...'`` read too) and in inline code that gives a command with arguments. Shell expansions (``$VAR``,
``"$(...)"``) and ALL-CAPS doc placeholders (``ROOT``, ``N``) become a value that parses (``1``, else ``X``);
synopsis groups such as ``[--flow tvl1|dis]`` are checked with each alternative.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import inspect
import io
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("egomodel", "tuning", "benchmarks")
SHELL_TAGS = {"", "bash", "sh", "shell", "console"}
# the first component of a path the docs may name in the repository; other paths are the user's
TOP_LEVEL = {"egomodel", "tuning", "benchmarks", "docs", "search_spaces", "tests", "kuberay", ".ci",
             "pyproject.toml", "README.md"}
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*$")  # ROOT, N, PARENT_RUN_ID
PYTHON = re.compile(r"^(?:.*/)?python(?:\d+(?:\.\d+)*)?$")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
NOT_COMMANDS = {"export", "unset", "cd", "source", ".", "#"}
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([^\s`]*)")
DIAGRAM = re.compile("[\u2500-\u257f\u25b2-\u25c4]")  # box drawing and arrows: an untagged block that is a picture
SYNOPSIS_GROUP = re.compile(r"\[(-[^\[\]]*)\]")  # [--flow tvl1|dis], not data.test_users=[P02]


@dataclass(frozen=True)
class Word:
    text: str
    opaque: bool = False  # holds a shell expansion: its value is not known


@dataclass(frozen=True)
class DocCommand:
    where: str  # FILE:LINE
    text: str  # the line as the doc gives it
    module: str  # the module whose main() parses it
    args: tuple[Word, ...]
    inline: bool = False


# --- Markdown ---------------------------------------------------------------------------------------------


def code_blocks(text: str) -> list[tuple[str, int, list[str]]]:
    """(tag, first line number of the block's content, its lines) of each fenced block."""
    blocks, lines, i = [], text.split("\n"), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, tag = len(m.group(1)), m.group(2), m.group(3).lower()
        body, j = [], i + 1
        while j < len(lines):
            close = FENCE.match(lines[j])
            if close and close.group(2)[0] == fence[0] and len(close.group(2)) >= len(fence) and not close.group(3):
                break
            line = lines[j]
            body.append(line[min(indent, len(line) - len(line.lstrip())):])
            j += 1
        blocks.append((tag, i + 2, body))
        i = j + 1
    return blocks


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of the lines outside fenced code blocks."""
    inside = set()
    for _, first, body in code_blocks(text):
        inside.update(range(first - 1, first + len(body) + 1))
    return [(n, line) for n, line in enumerate(text.split("\n"), 1) if n not in inside]


def inline_code(line: str) -> list[str]:
    return [m.group(2).strip() for m in re.finditer(r"(`+)(.+?)\1", line)]


# --- shell ------------------------------------------------------------------------------------------------


def logical_lines(body: list[str], first: int, console: bool) -> list[tuple[int, str]]:
    """A code block's command lines: continuations joined, prompts stripped, here-documents skipped."""
    out, i = [], 0
    while i < len(body):
        start, line = first + i, body[i]
        stripped = line.lstrip()
        if console and not stripped.startswith("$ "):
            i += 1
            continue
        line = stripped[2:] if stripped.startswith("$ ") else line
        while line.rstrip().endswith("\\") and i + 1 < len(body):
            i += 1
            line = line.rstrip()[:-1] + " " + body[i].strip()
        i += 1
        heredoc = re.search(r"<<-?\s*['\"]?(\w+)", line)
        if heredoc:
            while i < len(body) and body[i].strip() != heredoc.group(1):
                i += 1
            i += 1
        out.append((start, line))
    return out


def _skip_expansion(s: str, i: int) -> int:
    """The index after the expansion that starts at s[i] == '$' or '`'."""
    if s[i] == "`":
        j = s.find("`", i + 1)
        return len(s) if j < 0 else j + 1
    if s.startswith("$(", i) or s.startswith("${", i):
        opening, closing = s[i + 1], ")" if s[i + 1] == "(" else "}"
        depth, j = 0, i + 1
        while j < len(s):
            if s[j] == opening:
                depth += 1
            elif s[j] == closing:
                depth -= 1
                if depth == 0:
                    return j + 1
            elif s[j] == "'":
                k = s.find("'", j + 1)
                j = len(s) if k < 0 else k
            j += 1
        return len(s)
    m = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*|[0-9@*#?$!-])").match(s, i)
    return m.end() if m else i + 1


def simple_commands(s: str) -> list[list[Word]]:
    """The words of each simple command in a shell line, split at ``&&``, ``||``, ``|``, ``;``, ``&``;
    redirections and comments dropped, quotes removed, expansions kept as opaque words."""
    commands: list[list[Word]] = [[]]
    chars: list[str] | None = None
    opaque = redirect = False

    def end_word() -> None:
        nonlocal chars, opaque, redirect
        if chars is not None and not redirect:
            commands[-1].append(Word("".join(chars), opaque))
        elif chars is not None:
            redirect = False
        chars, opaque = None, False

    i = 0
    while i < len(s):
        c = s[i]
        if c in " \t\n":
            end_word()
            i += 1
        elif c == "#" and chars is None:
            break
        elif c == "\\":
            chars = (chars or []) + [s[i + 1 : i + 2]]
            i += 2
        elif c == "'":
            j = s.find("'", i + 1)
            j = len(s) if j < 0 else j
            chars = (chars or []) + [s[i + 1 : j]]
            i = j + 1
        elif c == '"':
            chars, i = chars or [], i + 1
            while i < len(s) and s[i] != '"':
                if s[i] in "$`" and i + 1 < len(s) and (s[i] == "`" or s[i + 1] in "({_" or s[i + 1].isalnum()):
                    i, opaque = _skip_expansion(s, i), True
                    chars.append("$")
                else:
                    if s[i] == "\\" and i + 1 < len(s) and s[i + 1] in '"\\$`':
                        i += 1
                    chars.append(s[i])
                    i += 1
            i += 1
        elif c in "$`":
            i, opaque, chars = _skip_expansion(s, i), True, (chars or []) + ["$"]
        elif c in "|;&":
            end_word()
            i += 2 if s[i : i + 2] in ("&&", "||", ";;") else 1
            if c == "&" and s[i : i + 1] == ">":  # &> file
                continue
            commands.append([])
        elif c in "<>":
            if chars is not None and "".join(chars).isdigit():  # 2> file
                chars = None
            end_word()
            j = i
            while j < len(s) and s[j] in "<>&|-":
                j += 1
            target = re.compile(r"\s*\d+\b").match(s, j) if s[j - 1] == "&" else None  # 2>&1
            i, redirect = (target.end(), False) if target else (j, True)
        elif c in "()":
            end_word()
            i += 1
        else:
            chars = (chars or []) + [c]
            i += 1
    end_word()
    return [words for words in commands if words]


# --- the project's commands -------------------------------------------------------------------------------


@functools.cache
def console_scripts() -> dict[str, str]:
    """pyproject's console scripts: name -> module (read by hand: tomllib is Python 3.11+)."""
    section = re.search(r"^\[project\.scripts\]\n(.*?)(?=^\[)", (ROOT / "pyproject.toml").read_text(), re.M | re.S)
    return dict(re.findall(r'^([\w.-]+)\s*=\s*"([\w.]+):', section.group(1), re.M)) if section else {}


def _dispatcher_commands(module: str) -> dict[str, tuple[str, str]] | None:
    commands = getattr(importlib.import_module(module), "COMMANDS", None)
    return commands if isinstance(commands, dict) else None


def project_commands(words: list[Word]) -> list[tuple[str, list[Word]]]:
    """(module, arguments) of the project command a simple command runs, if any, and of those inside its
    quoted shell strings (``ray exec cluster.yaml 'cd ~/x && python -m tuning.search ...'``)."""
    found: list[tuple[str, list[Word]]] = []
    for w in words:
        if not w.opaque and (" " in w.text or "\n" in w.text):
            for inner in simple_commands(w.text):
                found += project_commands(inner)
    k = 0
    while k < len(words) and ENV_ASSIGNMENT.match(words[k].text):
        k += 1
    if k == len(words) or words[k].text in NOT_COMMANDS:
        return found
    scripts = console_scripts()
    for i in range(k, len(words)):
        text, rest = words[i].text, words[i + 1 :]
        if PYTHON.match(text) and len(rest) >= 2 and rest[0].text == "-m" and rest[1].text.split(".")[0] in PACKAGES:
            return found + [(rest[1].text, rest[2:])]
        if PYTHON.match(text) and rest and rest[0].text.endswith("classify_video.py"):
            return found + [("egomodel.classify_video", rest[1:])]
        if (i == k or words[i - 1].text == "--") and text.rsplit("/", 1)[-1] in scripts:
            return found + [(scripts[text.rsplit("/", 1)[-1]], rest)]
    return found


def commands_in(path: Path, text: str) -> list[DocCommand]:
    """Every project command line in a Markdown document."""
    name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    out = []
    for tag, first, body in code_blocks(text):
        if tag not in SHELL_TAGS or (not tag and DIAGRAM.search("\n".join(body))):
            continue
        for line_no, line in logical_lines(body, first, console=tag == "console"):
            for variant in synopsis_variants(line):
                for words in simple_commands(variant):
                    out += [DocCommand(f"{name}:{line_no}", line.strip(), m, tuple(a))
                            for m, a in project_commands(words)]
    for line_no, line in prose_lines(text):
        for code in inline_code(line):
            for variant in synopsis_variants(code):
                for words in simple_commands(variant):
                    out += [DocCommand(f"{name}:{line_no}", code, m, tuple(a), inline=True)
                            for m, a in project_commands(words)]
    return out


def synopsis_variants(line: str) -> list[str]:
    """A line with ``[--opt a|b]`` groups as plain command lines: every group in with its first alternative,
    then each other alternative in turn."""
    groups = list(SYNOPSIS_GROUP.finditer(line))
    if not groups:
        return [line]
    choices = [[alt.split("|") for alt in g.group(1).split()] for g in groups]

    def render(pick: dict[tuple[int, int], str]) -> str:
        out, last = [], 0
        for n, g in enumerate(groups):
            words = [pick.get((n, w), alts[0]) for w, alts in enumerate(choices[n])]
            out += [line[last : g.start()], " ".join(words)]
            last = g.end()
        return "".join(out + [line[last:]])

    variants = [render({})]
    for n, group in enumerate(choices):
        for w, alts in enumerate(group):
            variants += [render({(n, w): alt}) for alt in alts[1:]]
    return variants


# --- parsing with the project's own parser ----------------------------------------------------------------


class _Parsed(BaseException):
    """Raised once the outermost parse returns (or --help is printed): nothing after it runs."""


class _ParseError(BaseException):
    pass


_PARSE_METHODS = ("parse_args", "parse_known_args", "parse_intermixed_args", "parse_known_intermixed_args")


def _parse_only() -> contextlib.ExitStack:
    """Patch argparse so that a command's main() stops right after its parser has read the arguments."""
    depth = [0]

    def wrap(original):
        def parse(self, *a, **k):
            depth[0] += 1
            try:
                result = original(self, *a, **k)
            finally:
                depth[0] -= 1
            if depth[0] == 0:
                raise _Parsed
            return result

        return parse

    def error(self, message):
        raise _ParseError(f"{self.prog}: error: {message}")

    def exit_(self, status=0, message=None):
        raise _Parsed

    stack = contextlib.ExitStack()
    for name in _PARSE_METHODS:
        stack.enter_context(mock.patch.object(argparse.ArgumentParser, name,
                                              wrap(getattr(argparse.ArgumentParser, name))))
    stack.enter_context(mock.patch.object(argparse.ArgumentParser, "error", error))
    stack.enter_context(mock.patch.object(argparse.ArgumentParser, "exit", exit_))
    return stack


def parse_error(module: str, args: list[str]) -> str | None:
    """Why ``python -m module args`` does not parse with the module's own parser; None when it parses."""
    try:
        mod = importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 -- a missing or broken module is the finding
        return f"cannot import {module}: {type(e).__name__}: {e}"
    commands = _dispatcher_commands(module)
    if commands is not None:  # egomodel COMMAND ... / egosearch COMMAND ...
        if not args or args[0] in ("-h", "--help"):
            return None
        if args[0] not in commands:
            return f"{module}: unknown command {args[0]!r} (commands: {', '.join(commands)})"
        return parse_error(commands[args[0]][0], args[1:])
    main = getattr(mod, "main", None)
    takes_argv = main is not None and bool(inspect.signature(main).parameters)
    if main is None or not (takes_argv or "parse_args" in inspect.getsource(mod)):  # main() without a parser
        return f"{module} takes no arguments, given {args}" if args else None
    sink = io.StringIO()
    try:
        with _parse_only(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), \
                mock.patch.object(sys, "argv", [module, *args]):
            main(list(args)) if takes_argv else main()
    except _Parsed:
        return None
    except _ParseError as e:
        return str(e)
    except SystemExit as e:
        return f"{module}: exited ({e.code}) before its parser read the arguments"
    except Exception as e:  # noqa: BLE001
        return f"{module}: {type(e).__name__} before its parser read the arguments: {e}"
    return f"{module}: main() returned without parsing its arguments with argparse"


def check_command(cmd: DocCommand) -> str | None:
    """A failure line naming the doc's file:line and the command, or None when it parses. Unknown values
    (expansions, ALL-CAPS placeholders) are tried as ``1``, then ``X``."""
    module, args = cmd.module, cmd.args
    sub = _dispatcher_commands(module) if len(args) == 1 else None
    if cmd.inline and sub and args[0].text in sub:  # a bare `egomodel train` in prose: that command must exist
        module, args = sub[args[0].text][0], ()
    if cmd.inline and not args:  # a bare `python -m X` in prose names the command: it must exist
        try:
            importlib.import_module(module)
            return None
        except Exception as e:  # noqa: BLE001
            return f"{cmd.where}: `{cmd.text}`: cannot import {module}: {type(e).__name__}: {e}"
    errors = []
    for value in ("1", "X"):
        args = [value if w.opaque or PLACEHOLDER.match(w.text) else w.text for w in cmd.args]
        err = parse_error(cmd.module, args)
        if err is None:
            return None
        errors.append(err)
    return f"{cmd.where}: `{cmd.text}`: {errors[0]}"


# --- paths and anchors ------------------------------------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: links and code marks dropped, lowercase, punctuation removed, spaces -> -."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    out, seen = set(), {}
    for _, line in prose_lines(text):
        m = re.match(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            s = slug(m.group(1))
            n = seen.get(s, 0)
            out.add(s if n == 0 else f"{s}-{n}")
            seen[s] = n + 1
        out.update(re.findall(r"<a\s+(?:name|id)=\"([^\"]+)\"", line))
    return out


def _repo_path(token: str) -> str | None:
    """The repository path an inline code token names, or None when it is not one (a user's path,
    a placeholder, a command)."""
    token = re.sub(r"(?<=\.\w)(:[\w.:-]*)$", "", token.strip().rstrip(".,;"))  # tuning/search.py:42 / ::main
    if not re.fullmatch(r"\.?[\w./*-]+", token) or "//" in token:
        return None
    parts = token.strip("/").split("/")
    if parts[0] not in TOP_LEVEL and not re.fullmatch(r"cluster[\w-]*\.yaml", parts[0]):
        return None
    if len(parts) == 1 and "." not in parts[0] and not token.endswith("/"):
        return None  # a bare word: `tuning`, `tests` (the package, as often as the folder)
    return token.strip("/")


def path_failures(path: Path, text: str) -> list[str]:
    """Links and inline-code repository paths that do not exist; links to .md anchors without the heading."""
    name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    failures = []
    for line_no, line in prose_lines(text):
        where = f"{name}:{line_no}"
        for m in re.finditer(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", line):
            target = m.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            if not dest.exists():
                failures.append(f"{where}: link to a missing file: {target}")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text()):
                failures.append(f"{where}: link to a heading {dest.name} does not have: {target}")
        for code in inline_code(line):
            rel = _repo_path(code)
            if rel is None or (any(ROOT.glob(rel)) if "*" in rel else (ROOT / rel).exists()):
                continue
            if not any(PLACEHOLDER.match(p.split(".")[0]) or "..." in p for p in rel.split("/")):  # NAME.yaml
                failures.append(f"{where}: names a path the repository does not have: {code}")
    return failures
