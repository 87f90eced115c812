"""The README and docs/ as tests: every project command line they give parses with the project's own
argument parser (an unknown flag fails, naming the doc's file:line and the command), every repository path
and link they name exists, and nothing in the project points outside its repository."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.docs_commands import (
    ROOT,
    DocCommand,
    check_command,
    commands_in,
    path_failures,
    simple_commands,
    slug,
)

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Mistakes the README makes today, left for its rewrite (issue 25): the command as the README gives it.
# Once a line is fixed or gone, its entry here fails the test: delete it then.
README_KNOWN: dict[str, str] = {}  # README command lines known to be wrong, each with why (none today)


def _failures(doc: Path) -> list[str]:
    return [f for c in commands_in(doc, doc.read_text()) if (f := check_command(c))]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_doc_commands_parse_with_the_projects_parsers(doc: Path) -> None:
    failures = _failures(doc)
    if doc.name == "README.md":
        assert commands_in(doc, doc.read_text()), "no command found in README.md: is the extractor broken?"
        known = [f for f in failures if any(f"`{cmd}`" in f for cmd in README_KNOWN)]
        fixed = [cmd for cmd in README_KNOWN if not any(f"`{cmd}`" in f for f in known)]
        assert not fixed, f"README.md no longer gives these wrong commands: delete them from README_KNOWN: {fixed}"
        failures = [f for f in failures if f not in known]
    assert not failures, "commands the project's parsers refuse:\n" + "\n".join(failures)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_doc_paths_and_links_exist(doc: Path) -> None:
    failures = path_failures(doc, doc.read_text())
    assert not failures, "\n".join(failures)


def test_nothing_points_outside_the_repository() -> None:
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, check=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    outside = (".." + "/shared", "/work/" + "shared")  # spelled apart so this file does not name them
    found = []
    for name in filter(None, listed):
        path = ROOT / name
        if not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue
        for n, line in enumerate(data.decode(errors="replace").splitlines(), 1):
            found += [f"{name}:{n}: {line.strip()}" for s in outside if s in line]
    assert not found, "the project points outside its repository:\n" + "\n".join(found)


# --- the checker itself ----------------------------------------------------------------------------------


def _check_md(tmp_path: Path, md: str) -> tuple[list[DocCommand], list[str]]:
    doc = tmp_path / "guide.md"
    doc.write_text(md)
    commands = commands_in(doc, md)
    return commands, [f for c in commands if (f := check_command(c))]


def test_an_unknown_flag_fails_naming_file_line_and_command(tmp_path: Path) -> None:
    _, failures = _check_md(tmp_path, "Search:\n\n```bash\npython -m tuning.search --spce smoke\n```\n")
    assert len(failures) == 1
    assert f"{tmp_path / 'guide.md'}:4: `python -m tuning.search --spce smoke`" in failures[0]
    assert "unrecognized arguments: --spce smoke" in failures[0]


@pytest.mark.parametrize("line, error", [
    ("python -m egomodel.prepare fill ROOT --bogus 3", "unrecognized arguments: --bogus"),  # a sub-parser's
    ("python -m egomodel.prepare", "required: command"),
    ("python -m egomodel.prepare videos m.csv --out r [--flow tvl1|farneback]", "invalid choice: 'farneback'"),
    ("egosearch serach --space smoke", "unknown command 'serach'"),
    ("egomodel prepare fill ROOT --bogus", "unrecognized arguments: --bogus"),
    ("python -m tuning.report --parent", "expected one argument"),
    ("python -m egomodel.weights fetch --backbone resnet35", "invalid choice: 'resnet35'"),
    ("python -m tuning.nosuch --space smoke", "cannot import tuning.nosuch"),
    ("python DIR/classify_video.py VIDEO.mp4 --every-frames", "unrecognized arguments: --every-frames"),
    ("`python -m tuning.serach`", "cannot import tuning.serach"),
])
def test_each_kind_of_mistake_is_reported(tmp_path: Path, line: str, error: str) -> None:
    md = f"Prose:\n{line}\n" if line.startswith("`") else f"```\n{line}\n```\n"
    _, failures = _check_md(tmp_path, md)
    assert len(failures) == 1 and error in failures[0] and ":2: `" in failures[0], failures


def test_shell_forms_reach_the_parser(tmp_path: Path) -> None:
    md = """```console
$ export EGO=1
$ FOO=bar .venv/bin/python -m tuning.report \\
    --parent "$(cat id.txt)" --tracking-uri "http://$HOST:5000" && echo done | tee log
printed output, not a command
```

```bash
ray exec cluster.yaml 'cd ~/x && python -m egomodel.prepare fill "$ROOT" --workers $N'   # a comment
python -m benchmarks.run --json out.json > log.txt 2>&1; egosearch report --parent PARENT_RUN_ID
```

```
 egomodel ──► data
```

```yaml
python -m tuning.search --not-a-shell-block
```

Prose `python -m egomodel.weights check` and a mere name: `python -m tuning.search`, `egomodel`.
"""
    commands, failures = _check_md(tmp_path, md)
    assert not failures
    got = [(c.where.rsplit(":", 1)[1], c.module, [w.text for w in c.args if not w.opaque]) for c in commands]
    assert got == [
        ("3", "tuning.report", ["--parent", "--tracking-uri"]),
        ("9", "egomodel.prepare", ["fill", "--workers"]),
        ("10", "benchmarks.run", ["--json", "out.json"]),
        ("10", "tuning.commands", ["report", "--parent", "PARENT_RUN_ID"]),  # egosearch's dispatcher
        ("21", "egomodel.weights", ["check"]),
        ("21", "tuning.search", []),  # only imported: a name in prose is not a command line
        ("21", "egomodel.commands", []),
    ]
    assert [w.text for w in simple_commands("a 'b c' \"d\\\"e\" f\\ g # h")[0]] == ["a", "b c", 'd"e', "f g"]


def test_an_int_option_takes_a_shell_value_but_not_a_word(tmp_path: Path) -> None:
    _, ok = _check_md(tmp_path, '```bash\npython -m egomodel.prepare fill r --workers "$(nproc)"\n```\n')
    _, bad = _check_md(tmp_path, "```bash\npython -m egomodel.prepare fill r --workers many\n```\n")
    assert not ok and "invalid int value: 'many'" in bad[0]


def test_missing_paths_links_and_anchors_are_reported(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Title\n\n## Objectives, champion and `--set`\n\n"
                                      "## Objectives, champion and `--set`\n")
    md = """# Guide
[ok](other.md#objectives-champion-and---set) [second](other.md#objectives-champion-and---set-1) [self](#guide)
[gone](missing.md) [bad anchor](other.md#no-such-heading) [web](https://example.com/x.md#y)
`search_spaces/smoke.yaml`, `search_spaces/nope.yaml`, `tuning/search.py:42`, `docs/gone.md`
`benchmarks/results/*.json`, `benchmarks/results/*.nope`, `cluster-gpu.yaml`
user paths: `/data/GTEA61`, `runs/fb/checkpoints/stage3_best.pt`, `search_spaces/NAME.yaml`, `./my_space.yaml`
"""
    doc = tmp_path / "guide.md"
    doc.write_text(md)
    failures = path_failures(doc, md)
    assert [f.split(": ", 1)[1] for f in failures] == [
        "link to a missing file: missing.md",
        "link to a heading other.md does not have: other.md#no-such-heading",
        "names a path the repository does not have: search_spaces/nope.yaml",
        "names a path the repository does not have: docs/gone.md",
        "names a path the repository does not have: benchmarks/results/*.nope",
        "names a path the repository does not have: cluster-gpu.yaml",
    ]
    assert failures[0].startswith(f"{doc}:3: ")


def test_heading_slugs_follow_github() -> None:
    assert slug("Objectives, champion and export") == "objectives-champion-and-export"
    assert slug("`--set` and `--dry-run`") == "--set-and---dry-run"
    assert slug("3. The [cluster](cluster.md) path") == "3-the-cluster-path"
    assert slug("Tests (default suite)") == "tests-default-suite"
