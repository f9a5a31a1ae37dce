"""Every command the README and the documentation pages show runs as written: each ``robustlab`` line parses
against the CLI and its config loads with its ``--set`` overrides; each script or make target it names exists. The
documentation site itself builds with MkDocs in strict mode (broken links and unresolved API references fail).

A line's ``[...]`` groups are optional flags (checked once with and once without them), ``a | b`` alternatives are
each checked, and upper-case placeholders (RUN, NAME, CKPT) stand for the user's own values.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from robustlab.cli import build_parser
from robustlab.experiment import load_config

ROOT = Path(__file__).resolve().parents[1]
PROMPT = re.compile(r"^(\$ )?(nice -n \d+ )?(\.venv/bin/)?(?P<cmd>(robustlab|python|make) .*)$")


PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def readme_commands() -> list[str]:
    """The command lines of the code blocks of the README and the documentation pages, comments dropped."""
    lines, fence, commands = [], False, False
    for line in (text for page in PAGES for text in page.read_text().splitlines()):
        if line.startswith("```"):
            fence = not fence
            commands = fence and line.strip() != "```text"  # a ```text block shows output, not commands
            continue
        match = PROMPT.match(line.strip()) if commands else None
        if match:
            lines.append(match["cmd"].split("  #", 1)[0].split(" # ", 1)[0].strip())
    return lines


def variants(command: str) -> list[list[str]]:
    """The argument lists a line stands for: with and without its optional groups, each alternative."""
    bare = re.sub(r"\s*\[[^\]]*\]", "", command)
    full = re.sub(r"\[([^\]]*)\]", r"\1", command)
    out = []
    for text in dict.fromkeys([bare, full]):
        words = shlex.split(text)
        choices = [i for i, w in enumerate(words) if w == "|"]
        if choices:  # "a | b | c": one variant per alternative
            first, last = choices[0] - 1, choices[-1] + 1
            for option in words[first:last + 1:2]:
                out.append(words[:first] + [option] + words[last + 1:])
        else:
            out.append(words)
    return [[w.split("|")[0] for w in words] for words in out]  # "--norm linf|l2": its first value


COMMANDS = readme_commands()


def test_the_readme_shows_commands_for_every_subcommand():
    assert {c.split()[1] for c in COMMANDS if c.startswith("robustlab ")} == {"train", "eval", "demo", "list"}


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.startswith("robustlab ")])
def test_a_readme_robustlab_line_parses_and_its_config_loads(command):
    for words in variants(command):
        args = build_parser().parse_args(words[1:])  # argparse exits (SystemExit 2) on a bad flag
        if args.command == "train":
            assert (ROOT / args.config).is_file() or args.config == "bad.toml", f"{args.config} does not exist"
            if args.config != "bad.toml":
                load_config(ROOT / args.config, args.set)


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.startswith(("python ", "make "))])
def test_a_readme_script_or_make_target_exists(command):
    words = shlex.split(command)
    if words[0] == "make":
        targets = re.findall(r"^([a-z-]+):", (ROOT / "Makefile").read_text(), flags=re.M)
        assert words[1] in targets
    else:
        assert (ROOT / words[1]).is_file(), f"{words[1]} does not exist"


def test_the_documentation_site_builds_in_strict_mode(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    home = (tmp_path / "site" / "index.html").read_text()
    assert "Three examples" in home  # the README is the home page
    assert "Robust accuracy of" in (tmp_path / "site" / "api" / "index.html").read_text()  # the API reference


def test_the_readme_shows_the_demos_own_output_and_quotes_only_its_numbers():
    """The block between the demo markers is what ``benchmarks/readme_demo_table.py`` wrote from a demo run; the
    paragraph under it quotes that table, so a regenerated table cannot leave stale numbers beside it."""
    import sys
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from readme_demo_table import BEGIN, END, replace_block

    readme = (ROOT / "README.md").read_text()
    block = readme.split(BEGIN)[1].split(END)[0]
    assert block.strip().startswith("```text\nrobustlab demo: LeNet-5 on MNIST-5k") and "SMOKE" not in block
    assert "Reused" not in block  # a first run's output
    table_numbers = set(re.findall(r"\d+\.\d", block))
    reading = readme.split(END)[1].split("\n## ")[0]
    quoted = set(re.findall(r"(\d+\.\d)%", reading))
    assert quoted and quoted <= table_numbers, quoted - table_numbers
    assert replace_block(readme, "new output").split(BEGIN)[1].split(END)[0] == "\n```text\nnew output\n```\n"
    with pytest.raises(SystemExit, match="must hold"):
        replace_block(readme.replace(END, ""), "x")


@pytest.mark.parametrize("script, table, results", [("eval_speed", "suites_table", "docs/results/eval_speed.json"),
                                                    ("eval_zoo", "readme_table", "docs/results/eval_zoo.json")])
def test_the_readme_suite_and_zoo_tables_are_the_committed_measurements(script, table, results):
    """The suites table (the demo model) and the zoo table in the README are what the benchmarks wrote from the
    measurements committed beside their documents."""
    import importlib
    import json
    import sys
    sys.path.insert(0, str(ROOT / "benchmarks"))
    module = importlib.import_module(script)
    readme = (ROOT / "README.md").read_text()
    block = readme.split(module.README_BEGIN)[1].split(module.README_END)[0]
    expected = getattr(module, table)(json.loads((ROOT / results).read_text()))
    assert block.strip() == expected.strip() and expected.count("\n") >= 3
