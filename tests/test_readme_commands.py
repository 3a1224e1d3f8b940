"""Every fenced shell command of README.md, bundle/docs/README.md and docs/, run in order as a newcomer copies them.

Design. Running every command for real takes many minutes (trainings, a whole demo, a minute of fault cases, ~20
Python processes that each import torch and MONAI), and a suite on 2 cores must stay within a few minutes. So:

* The commands are **extracted, not listed here**: every ```bash / ```sh / ```shell / ```console block of the
  READMEs and of the documentation pages is split into commands (line continuations, comments, ``&&``, heredocs,
  ``VAR=value`` assignments and ``$VAR`` expansion, ``cd``). A command the harness cannot classify fails the test,
  so a new kind of command gets a rule instead of being skipped silently.
* Each README runs in order in a fresh "clone"; the pages of ``docs/`` run as one session, in the order of
  ``mkdocs.yml``'s navigation, since a page may use what an earlier page's commands wrote (``runs/cohort``, the
  bundle's weights). A clone is a temporary folder with the repository's files (``bundle/`` copied so
  ``bundle/models`` and ``bundle/eval`` are its own); the commands run with ``RESUNET3D_TINY=1``
  (:mod:`pipeline.utils.tiny`; the
  README shows it): trainings run one epoch without loader workers, cohorts are 8 subjects at 8 mm. Every
  ``python -m`` command of the project runs **for real, in this process** (``runpy``, as ``python -m`` does), so
  torch and MONAI are imported once: a module path, a flag, a config key or a file that a command reads and an
  earlier one was meant to write, all fail here. ``python -c`` snippets run for real too.
* Commands whose real run cannot be made short are **checked, not run** (the cheapest check that still catches a
  renamed module or a flag that no longer exists): modules that only time or install (``venv``, ``pip``,
  ``tests.faults``: a minute of fault cases that tests/test_faults.py runs, ``pipeline.demo``, ``pipeline.study``,
  ``benchmarks.*``)
  have their arguments parsed by their own ``argparse`` parser and stop there; ``torchrun`` arguments are parsed
  by torchrun's parser and the module it starts is checked the same way (``pipeline.bundle_run``: configs and
  override keys checked, nothing built; tests/test_bundle.py runs DDP for real); ``make X`` is ``make -n X``;
  ``pip install`` arguments go through pip's own parser and the extras named must exist in setup.cfg; a Python
  heredoc script (the README's minute-long walk-through) is compiled, its imports executed and each call of an
  imported function or class bound to its signature, so a renamed function or keyword fails.

That catches the usual breakage (a moved module, a renamed flag or config key, a changed output folder that the
next command reads) within about a minute per README on 2 cores; what it does not catch is numerical quality (the
demo's report and tests/test_bundle.py cover that).
"""

from __future__ import annotations

import argparse
import ast
import configparser
import contextlib
import inspect
import logging
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pipeline.bundle_files import BUNDLE_DIR_VARIABLE

ROOT = Path(__file__).resolve().parents[1]
READMES = ("README.md", "bundle/docs/README.md")


def docs_pages() -> tuple[str, ...]:
    """The documentation pages in the order of ``mkdocs.yml``'s navigation (paths relative to the repository)."""
    import yaml

    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    return tuple(f"docs/{page}" for entry in nav for page in entry.values())


#: What runs in one fresh clone, in order, and the fewest commands each must yield (so a broken extraction fails).
SESSIONS = {"README.md": (READMES[:1], 2), "bundle/docs/README.md": (READMES[1:], 8), "docs": (docs_pages(), 20)}
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
TINY = "RESUNET3D_TINY"

#: Modules whose arguments are parsed but which are not run, and why (module name or package prefix).
CHECK_ONLY = {
    "venv": "creates a virtual environment",
    "pip": "installs packages",
    "tests.faults": "runs every fault case (about a minute); tests/test_faults.py runs them",
    "pipeline.demo": "the whole demo (minutes); tests/test_demo.py runs it on small settings",
    "pipeline.study": "the whole study (5-10 seeds per arm: even RESUNET3D_TINY trains for many minutes on 2 loaded"
    " cores); tests/test_study.py runs its --quick settings end to end",
    "benchmarks": "benchmarks measure for minutes; tests/test_benchmarks.py runs their --quick",
}
_FENCE = re.compile(r"^```([\w-]*)\s*$")
_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
_ASSIGNMENT = re.compile(r"^[A-Za-z_]\w*=")
_HEREDOC = re.compile(r"<<-?\s*(['\"]?)(\w+)\1")


class ReadmeCommandError(AssertionError):
    """A README command failed: names the file, the line and the command."""


class _ArgumentsParsed(BaseException):
    """Raised once a command's arguments were parsed, to stop a check-only command before it runs."""


# ----------------------------------------------------------------------------------------------- extraction
@dataclass
class Command:
    """One shell command of a README.

    Attributes:
        readme: the README's path relative to the repository.
        line: the line of the README the command starts on.
        text: the command as written (continuations joined).
        words: the command's words after expansion and quote removal.
        env: ``NAME=value`` prefixes of the command.
        stdin: the heredoc fed to it, if any.
        block: index of the fenced block in the README (each block starts at the repository root).
    """

    readme: str
    line: int
    text: str
    words: list[str]
    env: dict[str, str] = field(default_factory=dict)
    stdin: str | None = None
    block: int = 0

    def __str__(self) -> str:
        return f"{self.readme}:{self.line}: {self.text.strip()}"


def fenced_shell_blocks(markdown: str) -> list[tuple[int, str, str]]:
    """The fenced shell blocks of a Markdown text.

    Args:
        markdown: the text.

    Returns:
        ``(line of the first body line, language, body)`` for each block whose language is a shell.
    """
    blocks, lines, i = [], markdown.splitlines(), 0
    while i < len(lines):
        opening = _FENCE.match(lines[i].strip())
        if opening is None:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), len(lines))
        if opening.group(1).lower() in SHELL_LANGUAGES:
            blocks.append((i + 2, opening.group(1).lower(), "\n".join(lines[i + 1 : end])))
        i = end + 1
    return blocks


def expand(text: str, variables: dict[str, str]) -> str:
    """``$NAME`` / ``${NAME}`` replaced outside single quotes, as a POSIX shell does.

    Raises:
        ReadmeCommandError: for a variable that is neither assigned earlier nor in the environment.
    """
    out, single, double, i = [], False, False, 0
    while i < len(text):
        char = text[i]
        if char == "'" and not double:
            single = not single
        elif char == '"' and not single:
            double = not double
        elif char == "$" and not single:
            match = _VARIABLE.match(text, i)
            if match:
                name = match.group(1) or match.group(2)
                if name not in variables and name not in os.environ:
                    raise ReadmeCommandError(f"${name} is not set by an earlier command: {text.strip()}")
                out.append(variables.get(name, os.environ.get(name, "")))
                i = match.end()
                continue
        out.append(char)
        i += 1
    return "".join(out)


def _is_complete(text: str) -> bool:
    try:
        shlex.split(text, comments=True)
    except ValueError:  # an open quote: the command goes on on the next line
        return False
    return True


def logical_lines(body: str, language: str) -> Iterator[tuple[int, str, str | None]]:
    """The commands of a block body: continuations and multi-line quotes joined, heredocs cut out.

    Args:
        body: the block's text.
        language: its fence language (``console`` blocks hold commands only on ``$ `` lines).

    Yields:
        ``(line offset in the block, command text, heredoc text or None)``.
    """
    lines, i = body.splitlines(), 0
    while i < len(lines):
        start, line = i, lines[i]
        i += 1
        if language == "console":
            if not line.startswith("$ "):
                continue
            line = line[2:]
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        text = line
        while i < len(lines) and (text.endswith("\\") or not _is_complete(text)):
            text = text[:-1] + " " + lines[i] if text.endswith("\\") else text + "\n" + lines[i]
            i += 1
        heredoc = None
        match = _HEREDOC.search(text)
        if match:
            end = next((j for j in range(i, len(lines)) if lines[j].strip() == match.group(2)), len(lines))
            heredoc = "\n".join(lines[i:end]) + "\n"
            text = text[: match.start()] + text[match.end() :]
            i = end + 1
        yield start, text, heredoc


def split_commands(text: str) -> list[list[str]]:
    """Words of each command of a logical line, split at ``&&`` and ``;``.

    Raises:
        ReadmeCommandError: for pipes, redirections or ``||``, which the harness does not run.
    """
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for word in lexer:
        if word in ("&&", ";"):
            commands.append([])
        elif word and set(word) <= set("|&<>();"):
            raise ReadmeCommandError(f"the harness does not run {word!r} (pipes, redirections): {text.strip()}")
        else:
            commands[-1].append(word)
    return [words for words in commands if words]


def readme_commands(readme: str, markdown: str | None = None) -> list[Command]:
    """Every command of a README's fenced shell blocks, in order, with ``$VAR`` expanded per block.

    Args:
        readme: the README's path relative to the repository.
        markdown: its text (default: read from the repository).

    Returns:
        The commands (shell assignments such as ``C=bundle/configs`` included, with ``words == ["C=..."]``).
    """
    text = (ROOT / readme).read_text() if markdown is None else markdown
    commands = []
    for index, (first_line, language, body) in enumerate(fenced_shell_blocks(text)):
        variables: dict[str, str] = {}
        for offset, line, heredoc in logical_lines(body, language):
            for words in split_commands(expand(line, variables)):
                env = {}
                while len(words) > 1 and _ASSIGNMENT.match(words[0]):
                    name, _, value = words.pop(0).partition("=")
                    env[name] = value
                if len(words) == 1 and _ASSIGNMENT.match(words[0]) and not env:
                    name, _, value = words[0].partition("=")
                    variables[name] = value
                commands.append(Command(readme, first_line + offset, line, words, env, heredoc, index))
    return commands


# ----------------------------------------------------------------------------------------------- running
def _tool(word: str) -> str:
    """``python`` for ``.venv/bin/python``, ``../.venv/bin/python``, ``python3``...; the word itself otherwise."""
    name = Path(word).name
    return "python" if re.fullmatch(r"python(3(\.\d+)?)?", name) else name


def _check_only_reason(module: str) -> str | None:
    for prefix, reason in CHECK_ONLY.items():
        if module == prefix or module.startswith(prefix + "."):
            return reason
    return None


@contextlib.contextmanager
def _sandbox(cwd: Path, argv: list[str], env: dict[str, str], bundle: Path | None = None) -> Iterator[None]:
    """Run in ``cwd`` with ``sys.argv`` and ``env``; the bundle's logging.conf checked but not applied.

    ``bundle`` stands in for the repository's ``bundle/`` folder (``pipeline.bundle_run.BUNDLE_DIR``, where
    ``pipeline.inference.infer`` and the demo find the configs and, through ``bundle_root``, the trained weights).
    """
    import monai.bundle.workflows as workflows
    import torch

    import pipeline.bundle_run as bundle_run

    saved = os.getcwd(), sys.argv[:], dict(os.environ), torch.get_num_threads(), bundle_run.BUNDLE_DIR
    bundle_run.BUNDLE_DIR = bundle or bundle_run.BUNDLE_DIR
    apply_logging = workflows._apply_logging_file
    workflows._apply_logging_file = workflows._reject_executable_logging_config  # keep pytest's log handlers
    os.chdir(cwd)
    sys.argv = argv
    os.environ.update(env)
    if bundle is not None:  # what pipeline.bundle_files.find_bundle_dir reads at call time (inference, scripts)
        os.environ[BUNDLE_DIR_VARIABLE] = os.fspath(bundle)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        workflows._apply_logging_file = apply_logging
        os.chdir(saved[0])
        sys.argv = saved[1]
        os.environ.clear()
        os.environ.update(saved[2])
        torch.set_num_threads(saved[3])
        bundle_run.BUNDLE_DIR = saved[4]
        logging.disable(logging.NOTSET)


@contextlib.contextmanager
def _stop_after_parsing() -> Iterator[None]:
    """``argparse`` (and ``pipeline.bundle_run``'s hand-over to MONAI) stop once the arguments are accepted."""
    import monai.bundle

    parse_args = argparse.ArgumentParser.parse_args
    monai_run = monai.bundle.run

    def parse_then_stop(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> argparse.Namespace:
        raise _ArgumentsParsed(parse_args(self, *args, **kwargs))

    def checked_then_stop(**kwargs: Any) -> None:  # bundle_run checked files and override keys before this
        raise _ArgumentsParsed(kwargs)

    argparse.ArgumentParser.parse_args = parse_then_stop  # type: ignore[method-assign]
    monai.bundle.run = checked_then_stop
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_args = parse_args  # type: ignore[method-assign]
        monai.bundle.run = monai_run


def _exit_status(error: SystemExit) -> int:
    return 0 if error.code is None else error.code if isinstance(error.code, int) else 1


def run_module(
    module: str, args: list[str], cwd: Path, env: dict[str, str], check_only: bool, bundle: Path | None = None
) -> str:
    """``python -m module args``, in this process; with ``check_only`` its arguments are parsed and nothing runs.

    Returns:
        What was done (for the test's log).

    Raises:
        ReadmeCommandError: for a missing module, rejected arguments, or a non-zero exit status.
    """
    import importlib.util

    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        spec = None
    if spec is None:
        raise ReadmeCommandError(f"no module named {module}")
    parsed = False
    with _sandbox(cwd, [module, *args], env, bundle), contextlib.ExitStack() as stack:
        if check_only:
            stack.enter_context(_stop_after_parsing())
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        except _ArgumentsParsed:
            parsed = True
        except SystemExit as error:
            if _exit_status(error):
                raise ReadmeCommandError(f"exit status {_exit_status(error)}") from None
    if check_only and not parsed:
        raise ReadmeCommandError("check-only command ran without parsing arguments: teach the harness its CLI")
    return "arguments parsed" if check_only else "ran"


def _imported(node: ast.expr, namespace: dict[str, Any]) -> Any:
    """The object a ``name`` or ``name.attr.attr`` expression refers to among the imports (None if it is not one)."""
    if isinstance(node, ast.Name):
        return namespace.get(node.id)
    if isinstance(node, ast.Attribute):
        owner = _imported(node.value, namespace)
        return None if owner is None else getattr(owner, node.attr, None)
    return None


def check_python_source(source: str, filename: str) -> None:
    """Compile a script, run its imports, and bind each call of an imported function or class to its signature.

    Raises:
        ReadmeCommandError: for a syntax error, a failing import, or a call whose arguments do not fit.
    """
    tree = ast.parse(source, filename)
    namespace: dict[str, Any] = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            exec(compile(ast.Module([node], []), filename, "exec"), namespace)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, (ast.Name, ast.Attribute)):
            continue
        if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            continue
        target = _imported(node.func, namespace)
        if target is None or not callable(target):
            continue
        try:
            signature = inspect.signature(target)
        except (TypeError, ValueError):
            continue
        try:
            signature.bind(*node.args, **{k.arg: k.value for k in node.keywords})
        except TypeError as error:
            raise ReadmeCommandError(f"{filename}, line {node.lineno}: {ast.unparse(node)[:80]}: {error}") from None


class Session:
    """A newcomer's shell on a fresh clone: runs one README's commands in order."""

    def __init__(self, clone: Path) -> None:
        self.clone = clone
        self.cwd = clone
        self.block: tuple[str, int] = ("", -1)
        self.log: list[str] = []

    def run(self, command: Command) -> None:
        """Run or check one command.

        Raises:
            ReadmeCommandError: naming the README line when the command fails or cannot be classified.
        """
        if (command.readme, command.block) != self.block:  # each block is pasted from the repository root
            self.block, self.cwd = (command.readme, command.block), self.clone
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            done = self._dispatch(command)
        except ReadmeCommandError as error:
            raise ReadmeCommandError(f"{command}\n  -> {error}") from error
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        self.log.append(f"{wall:6.1f} s wall {cpu:6.1f} s CPU  {command.readme}:{command.line} {done}")

    def _dispatch(self, command: Command) -> str:
        words, env = command.words, {TINY: "1", **command.env}
        tool = _tool(words[0])
        if _ASSIGNMENT.match(words[0]):
            return "variable set"
        if tool == "cd":
            target = (self.cwd / words[1]).resolve()
            if not target.is_dir():
                raise ReadmeCommandError(f"no folder {target}")
            self.cwd = target
            return "cd"
        if words[0] in (".", "source"):
            return "skipped (activates the virtual environment)"
        if tool == "python":
            return self._python(command, words[1:], env)
        if tool == "torchrun":
            return self._torchrun(words[1:], env)
        if tool == "make":
            done = subprocess.run(["make", "-n", *words[1:]], cwd=self.cwd, capture_output=True, text=True)
            if done.returncode:
                raise ReadmeCommandError(f"make -n failed: {done.stderr.strip()}")
            return "make -n"
        if tool == "pip":
            return _check_pip(words[1:], self.clone)
        if (Path(sys.executable).parent / tool).is_file():
            return f"skipped ({tool} is installed)"
        raise ReadmeCommandError(f"the harness cannot classify {tool!r}: teach tests/test_readme_commands.py")

    def _python(self, command: Command, args: list[str], env: dict[str, str]) -> str:
        if args[:1] == ["-m"]:
            module = args[1]
            reason = _check_only_reason(module)
            if module == "pip":
                return _check_pip(args[3:] if args[2:3] == ["install"] else args[2:], self.clone)
            return run_module(module, args[2:], self.cwd, env, reason is not None, self.clone / "bundle") + (
                f" ({reason})" if reason else ""
            )
        if args[:1] == ["-c"]:
            with _sandbox(self.cwd, ["-c", *args[2:]], env, self.clone / "bundle"):
                exec(compile(args[1], f"{command.readme}:{command.line}", "exec"), {"__name__": "__main__"})
            return "ran (python -c)"
        if args[:1] == ["-"] and command.stdin is not None:
            check_python_source(command.stdin, f"{command.readme}:{command.line}")
            return "compiled, imports and call signatures checked (a walk-through script of about a minute)"
        raise ReadmeCommandError(f"unsupported python invocation {args[:2]}")

    def _torchrun(self, args: list[str], env: dict[str, str]) -> str:
        from torch.distributed.run import get_args_parser

        try:
            parsed = get_args_parser().parse_args(args)
        except SystemExit as error:
            raise ReadmeCommandError(f"torchrun rejected its arguments (exit {_exit_status(error)})") from None
        if not parsed.module:
            raise ReadmeCommandError("torchrun without -m: the harness checks modules only")
        run_module(parsed.training_script, parsed.training_script_args, self.cwd, env, True, self.clone / "bundle")
        return "torchrun and module arguments parsed (DDP runs in tests/test_bundle.py)"


def _check_pip(args: list[str], clone: Path) -> str:
    """``pip install ...``: pip's own parser accepts the options, and every ``.[extra]`` exists in setup.cfg."""
    with contextlib.suppress(ImportError):
        from pip._internal.commands import create_command

        try:
            create_command("install").parse_args(list(args))
        except SystemExit as error:
            raise ReadmeCommandError(f"pip rejected its arguments (exit {_exit_status(error)})") from None
    config = configparser.ConfigParser()
    config.read(clone / "setup.cfg")
    extras = set(config["options.extras_require"]) if config.has_section("options.extras_require") else set()
    for word in args:
        match = re.fullmatch(r"\.\[([\w,\- ]+)\]", word)
        for extra in match.group(1).split(",") if match else ():
            if extra.strip() not in extras:
                raise ReadmeCommandError(f"setup.cfg has no extra {extra.strip()!r} (extras: {sorted(extras)})")
    return "pip arguments parsed, extras checked (installs nothing)"


def make_clone(destination: Path) -> Path:
    """A fresh-clone stand-in: the repository's tracked top level linked, ``bundle/`` copied without outputs."""
    destination.mkdir(parents=True)
    for entry in ROOT.iterdir():
        if entry.name in (".git", ".venv", "bundle", "runs", "demo") or entry.name.startswith(".pytest"):
            continue
        (destination / entry.name).symlink_to(entry)
    ignore = shutil.ignore_patterns("*.pt", "*.ts", "eval", "__pycache__")
    shutil.copytree(ROOT / "bundle", destination / "bundle", ignore=ignore)
    return destination


# ----------------------------------------------------------------------------------------------- tests
def test_extraction_joins_continuations_quotes_heredocs_and_expands_variables():
    markdown = """
```bash
C=bundle/configs   # a comment
.venv/bin/python -m pipeline.bundle_run --config_file "['$C/common.yaml']" \\
    --num_epochs 2   # trailing comment
cd bundle && ../.venv/bin/python -c "
print('two lines')
"
.venv/bin/python - <<'EOF'
print("$C stays")
EOF
RESUNET3D_TINY=1 make demo
```
```python
not = shell
```
```console
$ .venv/bin/python -m tests.faults --list
output line
```
"""
    commands = readme_commands("README.md", markdown)
    words = [c.words for c in commands]
    assert words[0] == ["C=bundle/configs"]
    assert words[1] == [
        ".venv/bin/python",
        "-m",
        "pipeline.bundle_run",
        "--config_file",
        "['bundle/configs/common.yaml']",
        "--num_epochs",
        "2",
    ]
    assert words[2] == ["cd", "bundle"] and words[3] == ["../.venv/bin/python", "-c", "\nprint('two lines')\n"]
    assert words[4] == [".venv/bin/python", "-"] and commands[4].stdin == 'print("$C stays")\n'
    assert words[5] == ["make", "demo"] and commands[5].env == {"RESUNET3D_TINY": "1"}
    assert words[6] == [".venv/bin/python", "-m", "tests.faults", "--list"] and commands[6].block == 1
    assert [c.line for c in commands[:3]] == [3, 4, 6]
    with pytest.raises(ReadmeCommandError, match=r"\$D is not set"):
        readme_commands("README.md", "```sh\necho $D\n```\n")
    with pytest.raises(ReadmeCommandError, match="pipes"):
        readme_commands("README.md", "```sh\nls | wc\n```\n")


_HEREDOC_WITH_A_WRONG_KEYWORD = """.venv/bin/python - <<'EOF'
from pipeline.training.denoise import train_denoiser
train_denoiser([], [], None, "runs/denoiser", epochs=3)
EOF"""


@pytest.mark.parametrize(
    ("line", "message"),
    [
        # a flag that went away
        (".venv/bin/python -m pipeline.data.cohort --out runs/c --n_subjects 8", "exit status 2"),
        (".venv/bin/python -m pipeline.nowhere --out x", "no module named pipeline.nowhere"),  # a moved module
        (
            ".venv/bin/torchrun --standalone --nproc_per_node=2 -m pipeline.bundle_run --config_file "
            "\"['bundle/configs/common.yaml','bundle/configs/train_denoise.yaml']\" --num_epoch 1",
            "exit status 2",  # a config key that does not exist
        ),
        (".venv/bin/python -m tests.faults --fastest", "exit status 2"),
        ("pip install -e '.[tests]'", "no extra 'tests'"),
        ("make no-such-target", "make -n failed"),
        ("docker run resunet3d", "cannot classify 'docker'"),
        (_HEREDOC_WITH_A_WRONG_KEYWORD, "epochs"),
    ],
    ids=["flag", "module", "torchrun-key", "check-only-flag", "extra", "make", "unknown", "heredoc-keyword"],
)
def test_the_harness_fails_a_broken_command(tmp_path, line, message):
    session = Session(make_clone(tmp_path / "clone"))
    with pytest.raises(ReadmeCommandError, match=re.escape(message)):
        for command in readme_commands("README.md", f"```bash\n{line}\n```\n"):
            session.run(command)


def test_every_page_of_the_site_is_in_a_session():
    assert sorted(docs_pages()) == sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))


@pytest.mark.slow
@pytest.mark.parametrize("session_name", SESSIONS)
def test_every_readme_command_works_in_order_on_a_fresh_clone(session_name, tmp_path, monkeypatch):
    monkeypatch.setenv(TINY, "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    pages, fewest = SESSIONS[session_name]
    commands = [command for page in pages for command in readme_commands(page)]
    assert len(commands) >= fewest, f"{session_name}: only {len(commands)} fenced shell commands found"
    session = Session(make_clone(tmp_path / "clone"))
    for command in commands:
        session.run(command)
    sys.stderr.write(f"{session_name}:\n" + "\n".join(session.log) + "\n")  # shown with pytest -s or on failure
