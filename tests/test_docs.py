"""README.md and docs/: the README fits on a screen, and what the pages name exists: every relative link (and
its anchor), every repository path in backticks, every ``make`` target, and the test that each shell block
says runs it. A shell block starts with ``# run by tests/<file>.py::<test>`` (one or more such lines),
``# run by .ci/run``, or ``# not run by the tests``."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import yaml

from .conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SHELL = {"sh", "bash", "shell", "console", "zsh"}
# what the pipeline writes: named in the pages, absent from a fresh clone
OUTPUTS = ("data/", "models/", "metrics/", "plots/", "reports/", "checkpoints/")
# top-level folders whose files a backticked path may name
TRACKED_DIRS = ("unet", "flows", "tests", "benchmarks", "docs", "scripts", ".ci", ".dvc")
ROOT_FILE = re.compile(r"^(Makefile|[\w.-]+\.(yaml|yml|toml|txt|md))$")
FENCE = re.compile(r"^ {0,3}```(\S*)")
RUN_BY = re.compile(r"^# run by (\S+)$")
NOT_RUN = re.compile(r"^# not run by the tests\b")
MAKE = re.compile(r"\bmake((?:\s+(?:-\S+|[A-Z_]+=\S*))*)\s+([a-z][\w-]*)")


def split(text: str) -> tuple[str, list[tuple[str, list[str]]]]:
    """(the page with fenced blocks blanked, [(language, lines) of each fenced block])."""
    prose, blocks, block = [], [], None
    for line in text.splitlines():
        fence = FENCE.match(line)
        if block is None and fence:
            block = (fence[1], [])
        elif block is not None and fence and not fence[1]:
            blocks.append(block)
            block = None
        elif block is not None:
            block[1].append(line)
        else:
            prose.append(line)
            continue
        prose.append("")
    assert block is None, "a fenced block is never closed"
    return "\n".join(prose), blocks


def spans(prose: str) -> list[str]:
    """Inline code spans (a span may wrap onto the next line)."""
    return [s.strip() for s in re.findall(r"`([^`]+)`", prose)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    prose, _ = split(page.read_text())
    return {slug(m[1]) for m in re.finditer(r"^#{1,6}\s+(.+)$", prose, re.M)}


def expand(path: str) -> list[str]:
    """Glob patterns for a path that may hold ``<placeholder>``, ``*`` or ``{a,b}``."""
    path = re.sub(r"<[^>]*>", "*", path)
    m = re.search(r"\{([^}]*)\}", path)
    if not m:
        return [path]
    return list(itertools.chain(*(expand(path[: m.start()] + alt + path[m.end() :]) for alt in m[1].split(","))))


def exists(path: str) -> bool:
    return any(next(ROOT.glob(p), None) is not None if "*" in p else (ROOT / p).exists() for p in expand(path))


def deployments() -> set[str]:
    """Prefect's names for the deployments of prefect.yaml (both flows are named ``unet``): not paths."""
    return {f"unet/{d['name']}" for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}


def repo_path(span: str) -> str | None:
    """The repository path a code span names, if it names one this test can check."""
    if any(c.isspace() for c in span) or span.startswith(OUTPUTS) or span in deployments():
        return None
    path = span.split("::")[0].rstrip("/")
    if path.split("/")[0] in TRACKED_DIRS or ROOT_FILE.match(path):
        return path
    return None


def test_readme_fits_on_a_screen():
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= 150, f"README.md: {lines} lines (150 at most: the rest belongs in docs/)"


def test_every_relative_link_and_its_anchor_exists():
    broken = []
    for page in PAGES:
        prose, _ = split(page.read_text())
        prose = re.sub(r"`[^`]+`", "code", prose)
        for target in re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", prose):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            file, _, anchor = target.partition("#")
            dest = (page.parent / file).resolve() if file else page
            if not dest.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}: no such file")
            elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
                broken.append(f"{page.relative_to(ROOT)}: {target}: no heading #{anchor}")
    assert not broken, "\n".join(broken)


def test_every_repository_path_named_exists():
    missing = []
    for page in PAGES:
        prose, _ = split(page.read_text())
        for span in spans(prose):
            path = repo_path(span)
            if path is not None and not exists(path):
                missing.append(f"{page.relative_to(ROOT)}: `{span}`")
    assert not missing, "no such file:\n" + "\n".join(missing)


def makefile_targets() -> set[str]:
    targets = set()
    for line in (ROOT / "Makefile").read_text().splitlines():
        m = re.match(r"^([A-Za-z.][\w.-]*(?:[ \t]+[A-Za-z][\w.-]*)*)[ \t]*:(?!=)(.*)", line)
        if m:
            targets |= set(m[1].split()) | (set(m[2].split()) if m[1] == ".PHONY" else set())
    return targets - {".PHONY"}


def test_every_make_target_named_is_in_the_makefile():
    targets, unknown = makefile_targets(), []
    for page in PAGES:
        prose, blocks = split(page.read_text())
        code = spans(prose) + [line for _, lines in blocks for line in lines]
        for text in code:
            unknown += [f"{page.relative_to(ROOT)}: make {m[2]}" for m in MAKE.finditer(text) if m[2] not in targets]
    assert not unknown, f"not a target of the Makefile ({sorted(targets)}):\n" + "\n".join(unknown)


def check_block(lines: list[str]) -> str | None:
    """What is wrong with a shell block's marker, or None."""
    if lines and NOT_RUN.match(lines[0]):
        return None
    runners = list(itertools.takewhile(bool, (RUN_BY.match(line) for line in lines)))
    if not runners:
        return "starts with neither '# run by ...' nor '# not run by the tests'"
    commands = [line.split(" #")[0].strip() for line in lines if line.strip() and not line.startswith("#")]
    for m in runners:
        if m[1] == ".ci/run":
            ci = {line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()}
            if not ci & set(commands):
                return f"none of its commands is one that .ci/run runs ({commands})"
            continue
        file, _, name = m[1].partition("::")
        if not re.fullmatch(r"tests/test_\w+\.py", file) or not name:
            return f"{m[1]}: not tests/<file>.py::<test>"
        if not (ROOT / file).is_file():
            return f"{file}: no such test file"
        if not re.search(rf"^(async )?def {re.escape(name)}\(", (ROOT / file).read_text(), re.M):
            return f"{file} has no test {name}"
    return None


def test_every_shell_block_names_the_test_that_runs_it_or_says_none_does():
    bad = []
    for page in PAGES:
        for lang, lines in split(page.read_text())[1]:
            if lang in SHELL and (why := check_block(lines)):
                bad.append(f"{page.relative_to(ROOT)}: block {lines[:2]}: {why}")
    assert not bad, "\n".join(bad)
