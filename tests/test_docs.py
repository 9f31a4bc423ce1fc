"""The documentation stays true: its examples run, its command lines parse, and it speaks to users.

- Every ```python block of README.md and docs/**/*.md runs, each in a fresh namespace, in a
  temporary folder; blocks that load the embedded default model are marked slow.
  A block not meant to run is fenced otherwise (```text).
- Every `longshap ...` line of a shell block (```sh, ```console, ```bash) parses with the CLI's
  own parser, `python -m bench.NAME ...` names a benchmark script and only flags it declares,
  `make TARGET` names a Makefile target, and `pip install 'longshap[EXTRA]'` an extra of pyproject.
- The request options table of the user guide is generated from `longshap.hierarchy.options` at
  build time (docs/_hooks/docs_hooks.py); its generator lists every option.
- README.md, CHANGELOG.md and docs/ hold no words about how the project is worked on:
  sessions, agents, locks, issue numbers, scratch scripts, commit hashes, reference notes.
"""
from __future__ import annotations

import importlib.util
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from longshap.client.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
WORDED = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted(p for p in DOCS.rglob("*") if p.is_file() and p.suffix in (".md", ".py", ".yml", ".yaml", ".txt"))]
SHELL = {"sh", "console", "bash", "shell"}
NEEDS_DEFAULT_MODEL = re.compile(r"\bfrom_pretrained\(\s*\)")
"""Blocks that load the embedded default model (Gemma 3 270M): minutes on a small CPU, so marked slow."""


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    language: str
    code: str

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT).as_posix()}:{self.line}"


FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`\n]*)$")


def fenced_blocks(path: Path) -> list[Block]:
    """Every fenced code block of a Markdown file, with its language and the line it starts on."""
    blocks, lines = [], path.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        language = opening["info"].strip().split(" ")[0].lower()
        body: list[str] = []
        index += 1
        while index < len(lines) and not lines[index].strip().startswith(fence):
            body.append(lines[index][indent:] if lines[index][:indent].strip() == "" else lines[index])
            index += 1
        blocks.append(Block(path, index - len(body), language, "\n".join(body) + "\n"))
        index += 1
    return blocks


ALL_BLOCKS = [block for page in PAGES for block in fenced_blocks(page)]
PYTHON_BLOCKS = [block for block in ALL_BLOCKS if block.language in ("python", "py")]
SHELL_BLOCKS = [block for block in ALL_BLOCKS if block.language in SHELL]


def _python_params() -> list:
    return [
        pytest.param(block, id=block.name, marks=[pytest.mark.slow] if NEEDS_DEFAULT_MODEL.search(block.code) else [])
        for block in PYTHON_BLOCKS
    ]


@pytest.fixture
def registries():
    """Examples may register an estimator or a value function; each test leaves the registries as it found them."""
    from longshap.hierarchy.estimators import ESTIMATORS
    from longshap.hierarchy.values import VALUE_FUNCTIONS

    saved = [(registry, dict(registry)) for registry in (ESTIMATORS, VALUE_FUNCTIONS)]
    yield
    for registry, entries in saved:
        registry.clear()
        registry.update(entries)


@pytest.mark.parametrize("block", _python_params())
def test_python_example_runs(block, tmp_path, monkeypatch, registries):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": f"docs_example_{block.line}"}
    exec(compile(block.code, block.name, "exec"), namespace)  # noqa: S102 - the documentation's own examples


def test_the_documentation_has_examples_of_both_kinds():
    fast = [block for block in PYTHON_BLOCKS if not NEEDS_DEFAULT_MODEL.search(block.code)]
    assert len(fast) >= 5 and len(PYTHON_BLOCKS) > len(fast), [block.name for block in PYTHON_BLOCKS]


# ---- shell examples ------------------------------------------------------------------------------------


def shell_commands(block: Block) -> list[tuple[str, list[str]]]:
    """(where, argv) for each command of a shell block: continuation lines joined, `$ ` prompts and comments dropped."""
    commands, pending, start = [], "", 0
    for offset, line in enumerate(block.code.splitlines()):
        if not pending:
            start = offset
        line = line.removeprefix("$ ")
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        if text:
            argv = shlex.split(text, comments=True)
            if argv:
                commands.append((f"{block.name}+{start}", argv))
    return commands


ALL_COMMANDS = [command for block in SHELL_BLOCKS for command in shell_commands(block)]


def _commands(program: str) -> list:
    return [pytest.param(argv, id=where) for where, argv in ALL_COMMANDS if argv[0] == program]


@pytest.mark.parametrize("argv", _commands("longshap"))
def test_longshap_command_parses(argv):
    try:
        build_parser().parse_args(argv[1:])
    except SystemExit as error:  # argparse's way of refusing (or of printing --help)
        assert error.code == 0, f"`{shlex.join(argv)}` does not parse with the CLI's parser"


def _bench_flags(module: str) -> set[str]:
    source = (ROOT / "bench" / f"{module}.py").read_text(encoding="utf-8")
    if re.search(r"\bparser\(", source):
        source += (ROOT / "bench" / "common.py").read_text(encoding="utf-8")
    return set(re.findall(r"add_argument\(\s*\"(--[\w-]+)\"", source))


@pytest.mark.parametrize("argv", _commands("python"))
def test_benchmark_command_names_a_script_and_its_flags(argv):
    assert argv[1:2] == ["-m"] and argv[2].startswith("bench."), f"`{shlex.join(argv)}`: expected python -m bench.NAME"
    module = argv[2].removeprefix("bench.")
    assert (ROOT / "bench" / f"{module}.py").is_file(), f"no bench/{module}.py"
    unknown = {arg for arg in argv[3:] if arg.startswith("--")} - _bench_flags(module)
    assert not unknown, f"`{shlex.join(argv)}`: bench/{module}.py has no {sorted(unknown)}"


@pytest.mark.parametrize("argv", _commands("make"))
def test_make_command_names_a_target(argv):
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(encoding="utf-8"), re.MULTILINE))
    assert set(argv[1:]) <= targets, f"`{shlex.join(argv)}`: the Makefile has no {sorted(set(argv[1:]) - targets)}"


@pytest.mark.parametrize("argv", _commands("pip"))
def test_pip_command_names_existing_extras(argv):
    section = (ROOT / "pyproject.toml").read_text(encoding="utf-8").split("[project.optional-dependencies]")[1].split("\n[")[0]
    extras = set(re.findall(r"^([\w-]+)\s*=", section, re.MULTILINE))
    for arg in argv[2:]:
        match = re.fullmatch(r"longshap\[([\w,-]+)\]", arg)
        if match:
            assert set(match[1].split(",")) <= extras, f"`{shlex.join(argv)}`: pyproject has no extra {sorted(set(match[1].split(',')) - extras)}"


def test_shell_examples_were_found():
    programs = {argv[0] for _, argv in ALL_COMMANDS}
    assert {"longshap", "python", "make", "pip"} <= programs, programs
    assert len(_commands("longshap")) >= 10


def test_the_readme_opens_with_the_demo_and_test_commands():
    first = next(block for block in fenced_blocks(ROOT / "README.md"))
    assert first.line <= 5 and [argv[:2] for _, argv in shell_commands(first)] == [["make", "demo"], ["make", "test"]]


# ---- the options table -------------------------------------------------------------------------------------


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "_hooks" / "docs_hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_options_table_lists_every_option_with_its_flag():
    from longshap.hierarchy.options import OPTIONS

    hooks = _hooks()
    rows = [line for line in hooks.options_table().splitlines()[2:]]
    assert [re.match(r"\| `(\w+)` \| `(--[\w-]+)` \|", row).groups() for row in rows] == [(o.name, o.cli_flag) for o in OPTIONS.values()]
    assert hooks.OPTIONS_MARKER in (DOCS / "guide.md").read_text(encoding="utf-8")


# ---- words for users ---------------------------------------------------------------------------------------

CODE = re.compile(r"^([ \t]*)(`{3,}|~{3,}).*?^\1\2[ \t]*$|`[^`\n]+`|^:::[^\n]*$", re.MULTILINE | re.DOTALL)
"""Fenced blocks, inline code and API reference directives: names such as `explainer.session()` are not prose."""
PROSE_WORDS = {
    "sessions": re.compile(r"\bsessions?\b", re.IGNORECASE),
    "agents": re.compile(r"\bagents?\b", re.IGNORECASE),
    "locks": re.compile(r"\block(?:s|ed)?\b", re.IGNORECASE),
    "heavy jobs": re.compile(r"\bheavy[- ]job", re.IGNORECASE),
}
ANYWHERE = {
    "issue numbers": re.compile(r"\bissues?\s*#?\d+", re.IGNORECASE),
    "named issues": re.compile(r"\b(?:the|this)\s+\w+\s+issue\b", re.IGNORECASE),
    "scratch scripts": re.compile(r"\bscratch[- ]scripts?\b", re.IGNORECASE),
    "reference notes": re.compile(r"\bour\s+reference\s+notes\b", re.IGNORECASE),
    "commit hashes": re.compile(r"(?<![\w.#/-])(?=[0-9a-f]*[0-9])(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}(?![\w/-])"),
}
"""Words about how the project is worked on, which users have no use for."""


def process_words(text: str) -> list[str]:
    """Each word about how the project is worked on, as 'kind: match'."""
    prose = CODE.sub(" ", text)
    found = [f"{kind}: {m.group(0)!r}" for kind, pattern in PROSE_WORDS.items() for m in pattern.finditer(prose)]
    return found + [f"{kind}: {m.group(0)!r}" for kind, pattern in ANYWHERE.items() for m in pattern.finditer(text)]


@pytest.mark.parametrize("path", WORDED, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_user_facing_text_has_no_words_about_how_the_project_is_worked_on(path):
    assert not process_words(path.read_text(encoding="utf-8")), f"{path.relative_to(ROOT)}: {process_words(path.read_text(encoding='utf-8'))}"


@pytest.mark.parametrize(
    "text",
    [
        "measured in this session", "other agents' jobs", "under the heavy-job lock", "issue 7", "issues 7/11", "(issue 11.1)",
        "the scale issue found", "a scratch script", "see our reference notes", "at 7db1711", "hierarchy/ at 9b36565",
        "commit 21e3a219da311d4ca9196c3fbb7ad1345ff12767",
    ],
)
def test_the_word_check_finds_process_words(text):
    assert process_words(text), text


@pytest.mark.parametrize(
    "text",
    [
        "the wall clock", "blocked SDPA", "`sdpa_blocked`", "block-bounded attention", "a ModelSession per request",
        "`explainer.session()`", "1,081,631 tokens", "1998", "2.58× fewer", "d10.s0.w2", "deadbeef", "1e-15", "0.0089",
        "see the issue tracker", "a known issue",
    ],
)
def test_the_word_check_leaves_ordinary_words_alone(text):
    assert not process_words(text), text
