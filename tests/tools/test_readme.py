"""README.md and the documentation site's pages run as written: every code block says how it
is tested, and is.

The documents are README.md and the pages of ``docs/`` in the order of ``mkdocs.yml``'s nav
(the order in which a newcomer reads them). Each fenced block follows a marker line in the
Markdown source:

``<!-- test: session -->``
    run, in document order, as a new user on a fresh machine would: the ``bash`` blocks in one
    shell (so ``cd`` and ``eval "$(mei db env)"`` carry over) in a copy of the clone's
    ``examples/`` and ``pyproject.toml``, with no database configured (the embedded one) and a
    stand-in ``pip`` that checks the extras it is asked for exist; then the ``python`` blocks in
    one interpreter (like a notebook started from that shell), in order.
``<!-- test: file PATH -->``
    the block is the file ``PATH`` of the repository, character for character; the examples are
    run by ``tests/examples`` and by the session.
``<!-- test: copy PATH -->``
    the block is a part of ``PATH``, whole lines, character for character: of one code block
    of ``PATH`` (a page of the site, where that block is tested as its marker says) or of the
    file ``PATH`` (an example). The README's short examples are such copies.
``<!-- test: json -->``
    valid JSON of a DataJoint store configuration.
``<!-- test: output -->``
    what mei prints, compared with what it does print.
``<!-- test: dj014 -->``
    a DataJoint 0.14 block, run by ``tests/examples`` in that environment (from README.md; the
    same block on a page must equal it).
``<!-- test: skip, REASON -->``
    not run, for the reason given (a GPU, a Docker engine, the test suite itself).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from tools_testkit import (
    REPO,
    base_env,
    require_embedded,
    shared_directory,
    stop_embedded,
)

README = REPO / "README.md"
DOCS = REPO / "docs"
MARKER = re.compile(r"<!-- test: (?P<kind>[a-z0-9]+)(?:[ ,]+(?P<argument>.*?))? -->")
KINDS = {"session", "file", "copy", "json", "output", "dj014", "skip"}


@dataclass(frozen=True)
class Block:
    document: str  # relative to the repository's root
    line: int  # of the opening fence
    language: str
    kind: str
    argument: str
    code: str

    def __str__(self) -> str:
        return f"{self.label} ({self.language}, {self.kind})"

    @property
    def label(self) -> str:
        return f"{self.document}:{self.line}"


def blocks_of(path: Path = README, text: str | None = None) -> list[Block]:
    """Every fenced code block of the Markdown file ``path``, with its marker."""
    lines = (path.read_text() if text is None else text).splitlines(keepends=True)
    document = str(path.relative_to(REPO))
    blocks, i = [], 0
    while i < len(lines):
        if not lines[i].startswith("```"):
            i += 1
            continue
        marker = MARKER.fullmatch(lines[i - 1].strip()) if i else None
        end = i + 1
        while not lines[end].startswith("```"):
            end += 1
        blocks.append(
            Block(
                document=document,
                line=i + 1,
                language=lines[i][3:].strip(),
                kind=marker["kind"] if marker else "",
                argument=(marker["argument"] or "") if marker else "",
                code="".join(lines[i + 1 : end]),
            )
        )
        i = end + 1
    return blocks


def site_pages() -> list[Path]:
    """The site's pages in the order of mkdocs.yml's nav (the pages it generates excluded)."""
    import yaml

    def walk(entries):
        for entry in entries:
            value = next(iter(entry.values())) if isinstance(entry, dict) else entry
            if isinstance(value, list):
                yield from walk(value)
            else:
                yield value

    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]
    return [DOCS / page for page in walk(nav) if (DOCS / page).is_file()]


def documents() -> list[Path]:
    return [README, *site_pages()]


def all_blocks() -> list[Block]:
    return [block for path in documents() for block in blocks_of(path)]


def of_kind(kind: str, language: str | None = None) -> list[Block]:
    return [
        b for b in all_blocks() if b.kind == kind and (language is None or b.language == language)
    ]


def test_every_page_is_read_in_order():
    """Every Markdown page of docs/ is in the nav (so its blocks run, in a known order)."""
    on_disk = set(DOCS.rglob("*.md"))
    assert on_disk == set(site_pages()), f"not in mkdocs.yml's nav: {on_disk - set(site_pages())}"


def test_every_block_says_how_it_is_tested():
    blocks = all_blocks()
    assert len(blocks) >= 30
    for block in blocks:
        assert block.kind in KINDS, f"{block}: no `<!-- test: ... -->` line above the block"
        if block.kind in ("file", "copy"):
            assert (REPO / block.argument).is_file(), f"{block}: no file {block.argument}"
        if block.kind == "skip":
            assert len(block.argument) > 5, f"{block}: say why it is not run"
    # the marker grammar itself: a block without one is found
    text = "intro\n\n```bash\nmei demo\n```\n\n<!-- test: skip, why not -->\n```bash\nx\n```\n"
    assert [(b.kind, b.argument) for b in blocks_of(README, text)] == [
        ("", ""),
        ("skip", "why not"),
    ]


def test_file_blocks_are_the_example_files():
    blocks = of_kind("file")
    assert {b.argument for b in blocks} >= {
        "examples/lab_pipeline.py",
        "examples/workflow.py",
        "examples/my_stoppers.py",
        "examples/method.json",
    }
    for block in blocks:
        assert block.code == (REPO / block.argument).read_text(), (
            f"{block} differs from {block.argument}: run `python tests/tools/test_readme.py`"
        )


def contains_lines(text: str, part: str) -> bool:
    """``part`` (whole lines) occurs in ``text`` as it is, starting at a line."""
    return part.endswith("\n") and ("\n" + text).find("\n" + part) >= 0


def test_copy_blocks_are_copies():
    blocks = of_kind("copy")
    assert len([b for b in blocks if b.document == "README.md"]) >= 4
    for block in blocks:
        source = REPO / block.argument
        if source.suffix == ".md":
            found = [b for b in blocks_of(source) if contains_lines(b.code, block.code)]
            assert found, f"{block} is in no code block of {block.argument}: copy it from there"
            assert all(b.kind not in ("", "copy") for b in found), f"{block}: {found[0]}"
        else:
            assert contains_lines(source.read_text(), block.code), (
                f"{block} is not a part of {block.argument}: copy it from there"
            )
    # and a block that differs by a character is not a copy
    assert not contains_lines("a = 1\nb = 2\n", "b = 3\n")
    assert contains_lines("a = 1\nb = 2\n", "b = 2\n")


def test_the_readme_is_a_landing_page():
    """Short, with its examples and links into the site; the rest lives on the site's pages."""
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    blocks = blocks_of(README)
    assert {b.kind for b in blocks} <= {"copy", "skip", "dj014"}
    links = re.findall(r"\]\((docs/[^)#]+)(?:#[^)]*)?\)", text)
    assert len(set(links)) >= 10
    for link in links:
        assert (REPO / link).is_file(), f"README.md links to {link}, which does not exist"


def test_the_datajoint_014_recipe_is_one_block():
    """tests/examples runs the README's DataJoint 0.14 block; a page shows the same one."""
    blocks = of_kind("dj014")
    assert len([b for b in blocks if b.document == "README.md"]) == 1
    assert len(blocks) >= 2
    assert len({b.code for b in blocks}) == 1, [str(b) for b in blocks]


def test_json_blocks_are_store_configurations():
    blocks = of_kind("json")
    assert len(blocks) == 2
    for block in blocks:
        stores = json.loads(block.code)["stores"]
        assert stores["minio"]["protocol"] in ("file", "s3"), block


def test_the_root_error_shown_is_the_one_mei_gives():
    [block] = of_kind("output")
    root_home = Path("/root")
    if os.geteuid() != 0 or not root_home.is_dir() or root_home.stat().st_mode & 0o001:
        pytest.skip("the message is for root with a private /root (CI runs as root)")
    require_embedded()
    from mei.cli.embedded import EmbeddedDatabaseError, EmbeddedPostgres

    server = EmbeddedPostgres("/root/mei")
    if server.account.name != "postgres":
        pytest.skip("the README's example names the account 'postgres'")
    with pytest.raises(EmbeddedDatabaseError) as info:
        server._check_reachable()
    said = "mei demo: error: " + str(info.value)
    assert " ".join(block.code.split()) == " ".join(said.split())


FAKE_PIP = '''\
#!{python}
"""Stands in for pip in the README session: the environment is installed already (CI installs
it for real); this checks that every extra asked for exists in pyproject.toml."""
import re, sys, tomllib
args = sys.argv[1:]
assert args and args[0] == "install", args
extras = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]
for arg in args[1:]:
    if arg.startswith("-"):
        continue
    match = re.fullmatch(r"\\.\\[([a-z0-9_,-]+)\\]", arg)
    if match is None:
        sys.exit(f"fake pip: cannot check {{arg!r}}")
    for extra in match.group(1).split(","):
        if extra not in extras:
            sys.exit(f"fake pip: pyproject.toml has no extra {{extra!r}}")
print("fake pip: already installed:", " ".join(args[1:]))
'''

PYTHON_SESSION = """\
import json, os, sys
sys.path.insert(0, os.getcwd())  # as in a notebook or `python -i`: the working directory
blocks = json.load(open(sys.argv[1]))
namespace = {"__name__": "__main__"}
for block in blocks:
    print(f"### {block['label']}", flush=True)
    exec(compile(block["code"], block["label"], "exec"), namespace)
trace = namespace["output"]["mei.objectives.EvaluationObjective"]
facts = {
    "mei_shape": list(namespace["mei"].shape),
    "score": namespace["score"],
    "last_tracked_step": max(trace["times"]),
    "results": len(namespace["results"]),
}
print("FACTS " + json.dumps(facts))
"""


def test_the_readme_and_the_site_run_in_order_on_a_fresh_machine():
    """The session: bash blocks in one shell, then python blocks in one interpreter, in the
    order of the documents (README.md, then the site's pages as its nav lists them)."""
    require_embedded()
    pytest.importorskip("matplotlib")
    bash_blocks = of_kind("session", "bash")
    python_blocks = of_kind("session", "python")
    assert len(bash_blocks) >= 7 and len(python_blocks) >= 4
    with shared_directory() as clone:
        shutil.copytree(REPO / "examples", clone / "examples")
        shutil.copy(REPO / "pyproject.toml", clone)
        (clone / "bin").mkdir()
        pip = clone / "bin" / "pip"
        pip.write_text(FAKE_PIP.format(python=sys.executable))
        pip.chmod(0o755)
        data = clone / "data"
        env = base_env(data)
        env["PATH"] = os.pathsep.join([str(clone / "bin"), str(Path(sys.executable).parent)])
        env["PATH"] += os.pathsep + os.environ.get("PATH", "/usr/bin:/bin")
        env["LAB_SCHEMA"] = "lab_mei"  # the README's default, in this session's own database
        script = ["set -euo pipefail"]
        for block in bash_blocks:
            script += [f"echo '### {block.label}'", block.code]
        script.append(f"{sys.executable} -c 'import json, os; print(json.dumps(dict(os.environ)))'")
        script.append("pwd")
        try:
            shell = subprocess.run(
                ["bash", "-c", "\n".join(script)],
                env=env,
                cwd=clone,
                capture_output=True,
                text=True,
                timeout=900,
            )
            output = shell.stdout + shell.stderr
            assert shell.returncode == 0, f"the bash blocks failed:\n{output[-6000:]}"
            *_, environment, cwd = shell.stdout.strip().splitlines()
            assert Path(cwd) == clone / "examples"  # `cd examples` carried over
            check_bash_session(shell.stdout, shell.stderr, clone)

            (clone / "blocks.json").write_text(
                json.dumps([{"label": b.label, "code": b.code} for b in python_blocks])
            )
            (clone / "session.py").write_text(PYTHON_SESSION)
            python = subprocess.run(
                [sys.executable, str(clone / "session.py"), str(clone / "blocks.json")],
                env=json.loads(environment),  # the shell's, after `eval "$(mei db env)"`
                cwd=cwd,
                capture_output=True,
                text=True,
                timeout=900,
            )
            assert python.returncode == 0, (
                f"the python blocks failed:\n{(python.stdout + python.stderr)[-6000:]}"
            )
            facts = json.loads(python.stdout.split("FACTS ", 1)[1])
            check_python_session(facts, clone / "examples")
        finally:
            stop_embedded(data)


def check_bash_session(stdout: str, stderr: str, clone: Path) -> None:
    """What the bash blocks did, read from their output and files."""
    examples = clone / "examples"
    assert "fake pip: already installed: .[demo]" in stdout
    assert "fake pip: already installed: .[datajoint]" in stdout
    # mei demo: 32 neurons, both figures
    assert "32 neurons: correlation with the truth min" in stdout
    assert (clone / "mei-demo" / "meis.png").is_file()
    assert (clone / "mei-demo" / "traces.png").is_file()
    # the workflow: 8 MEIs, each like its neuron's filter
    assert "MEI: 8 of 8 computed" in stdout
    correlations = [float(r) for r in re.findall(r"correlation with its filter (\S+)", stdout)]
    assert len(correlations) == 8 and min(correlations) > 0.9, correlations
    # the worker finds everything done and says so; status agrees
    assert "mei worker: 0 done, 0 errors (stopped: no pending keys)" in stdout
    assert "mei worker: nothing left for this worker: 8 of 8 keys are done" in stderr
    assert re.search(r"^\s+done\s+8\s", stdout, re.MULTILINE)
    assert "cleared 0 error job(s)" in stdout
    # mei generate wrote its files
    assert (examples / "meis" / "meis.pt").is_file() and (examples / "meis" / "meis.png").is_file()
    for noise in ("Traceback", "No datajoint.json found"):
        assert noise not in stdout + stderr
    assert stderr.count("running as root") <= 1  # said once, when the cluster was made


def check_python_session(facts: dict, folder: Path) -> None:
    assert facts["mei_shape"] == [1, 1, 36, 64]
    assert facts["results"] == 64
    # the custom stopper's step cap (500) holds
    assert facts["last_tracked_step"] < 500
    for name in ("meis.png", "pairs.png", "traces.png", "frames.png", "movies.gif"):
        assert (folder / name).is_file(), name


def test_the_readme_does_not_promise_a_test_command_it_does_not_have():
    """The one-line test command installs extras that exist, and pytest collects every test
    folder from the repository root."""
    [command] = [b for b in blocks_of(README) if b.kind == "skip" and "pytest" in b.code]
    assert command.code.strip() == 'pip install -e ".[test,demo]" && python -m pytest'
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    extras = project["project"]["optional-dependencies"]
    assert {"test", "demo"} <= set(extras)
    assert project["tool"]["pytest"]["ini_options"]["testpaths"] == ["tests"]


def update_file_blocks() -> int:
    """Copy each ``file`` block's file into its document; return how many blocks changed."""
    changed = 0
    for path in documents():
        lines = path.read_text().splitlines(keepends=True)
        for block in reversed(blocks_of(path)):
            if block.kind != "file":
                continue
            text = (REPO / block.argument).read_text()
            if text != block.code:
                start = block.line  # the line after the opening fence (0-based index)
                end = start + len(block.code.splitlines())
                lines[start:end] = text.splitlines(keepends=True)
                changed += 1
        path.write_text("".join(lines))
    return changed


if __name__ == "__main__":  # python tests/tools/test_readme.py: the file blocks from the files
    print(f"updated {update_file_blocks()} block(s) of README.md and docs/")
