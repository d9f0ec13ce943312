"""Every command README and its pages in docs/ show exists: console scripts are on the virtual environment's PATH
with the subcommands they use, `python -m` modules import, scripts exist and accept every option given them."""

import contextlib
import functools
import importlib.util
import io
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_script, slow

REPO = Path(__file__).resolve().parents[1]
# README is the front page; the studies, the reference and the performance tables are its pages in docs/
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
README = "\n".join(path.read_text(encoding="utf-8") for path in PAGES)
BIN = Path(sys.executable).parent  # the virtual environment's scripts
PYTHONS = {"python", "python3", ".venv/bin/python"}
SYSTEM = {"git", "cd", "export", "bash"}  # shell built-ins and tools any clone already used


def fenced_commands() -> list[list[str]]:
    """The commands of README's ```bash blocks: comments dropped, continuation lines joined, `VAR="..."` lines
    substituted into later `$VAR`s, `a && b` split."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        variables = {}
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if not line or line.startswith("#"):
                continue
            assignment = re.fullmatch(r'([A-Z_]+)="(.*)"', line)
            if assignment:
                variables[assignment.group(1)] = assignment.group(2)
                continue
            line = re.sub(r"\$([A-Z_]+)", lambda m: variables.get(m.group(1), m.group(0)), line)
            words = shlex.split(line)
            while "&&" in words:
                cut = words.index("&&")
                commands.append(words[:cut])
                words = words[cut + 1:]
            commands.append(words)
    return commands


def inline_commands() -> list[list[str]]:
    """Inline `code` that starts with a command: a console script of this environment, python, or a `*-cli` tool."""
    installed = {path.name for path in BIN.iterdir()}
    commands = []
    for span in re.findall(r"`([^`\n]+)`", README):
        words = span.split()
        if len(words) > 1 and (words[0] in installed | PYTHONS or words[0].endswith("-cli")):
            commands.append(words)
    return commands


COMMANDS = fenced_commands() + inline_commands()


def executable(name: str) -> str | None:
    name = name.removeprefix(".venv/bin/")
    return shutil.which(name, path=str(BIN)) or (shutil.which(name) if name in SYSTEM | PYTHONS else None)


@functools.cache
def help_text(*argv: str) -> str:
    """`scripts/x.py [subcommand] --help`, run in this process through the script's own `main` (what the command
    line calls), so that the check costs no interpreter start."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), pytest.raises(SystemExit) as stopped:
        load_script(Path(argv[0]).stem).main([*argv[1:], "--help"])
    assert stopped.value.code in (0, None), f"{' '.join(argv)} --help failed: {stopped.value.code}"
    return printed.getvalue()


@functools.cache
def subcommand_help(program: str, *subcommands: str) -> subprocess.CompletedProcess:
    return subprocess.run([executable(program), *subcommands, "--help"], capture_output=True, text=True, timeout=120)


def check_script(words: list[str]):
    """`scripts/x.py [subcommand] --option ... [-- train.py options]`: the file exists and its parser knows every
    option (ablation.py hands what follows `--` to train.py)."""
    if "--" in words:
        cut = words.index("--")
        check_script(["scripts/train.py", *words[cut + 1:]])
        words = words[:cut]
    script = words[0]
    assert (REPO / script).is_file(), f"README runs {script}, which does not exist"
    argv = [script]
    if len(words) > 1 and re.fullmatch(r"[a-z][a-z-]*", words[1]):
        argv.append(words[1])  # a subcommand (predict.py caption ...)
    known = help_text(*argv)
    for option in (w.split("=")[0] for w in words if w.startswith("--")):
        assert re.search(rf"{re.escape(option)}\b", known), f"README gives {' '.join(argv)} {option}, which it lacks"


def test_readme_shows_commands():
    assert len(COMMANDS) > 20 and any(c[0] == "accelerate" for c in COMMANDS)


@pytest.mark.parametrize("words", COMMANDS, ids=lambda words: " ".join(words)[:60])
def test_every_readme_command_exists(words):
    program = words[0]
    assert executable(program), f"README runs `{program}`, which this environment does not provide"
    if program in SYSTEM:
        return
    if program in PYTHONS:
        if words[1] == "-m":
            assert importlib.util.find_spec(words[2]), f"python -m {words[2]}: no such module"
        elif words[1].endswith(".py"):
            check_script(words[1:])
        return
    scripts = [i for i, w in enumerate(words) if w.endswith(".py")]
    if scripts:  # accelerate launch / torchrun ... scripts/train.py --options
        check_script(words[scripts[0]:])


def subcommands_of(words: list[str]) -> list[str]:
    """The subcommands a README command gives another program (`accelerate launch`, `hf download`)."""
    if words[0] in SYSTEM | PYTHONS or words[0] == "pip":
        return []
    subcommands = []
    for word in words[1:]:
        if not re.fullmatch(r"[a-z][a-z-]*", word):
            break
        subcommands.append(word)
    return subcommands


@slow
@pytest.mark.parametrize("words", [c for c in COMMANDS if subcommands_of(c)], ids=lambda words: " ".join(words)[:60])
def test_every_readme_subcommand_exists(words):
    program, subcommands = words[0], subcommands_of(words)
    result = subcommand_help(program, *subcommands)
    assert result.returncode == 0, f"`{program} {' '.join(subcommands)}` does not exist: {result.stderr[-500:]}"


def test_readme_is_a_front_page_and_its_links_resolve():
    front = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(front.splitlines()) <= 450, "README is the front page: move reference and studies to docs/"
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)\)", page.read_text(encoding="utf-8")):
            if not target.startswith(("http://", "https://")):
                assert (page.parent / target).exists(), f"{page.relative_to(REPO)} links to {target}, which is missing"
