"""The docs as tests: the ` ```sh ` blocks of README.md and docs/*.md, their expected output and marks
(the convention is in CONTRIBUTING.md, "Docs that run"), and a bash session that runs them in order.

`python e2e/docwalk.py` lists every block: page, heading, first line, and where it runs (`test`:
`make test`; `e2e`: `make e2e` only; `serve`: against the model server alone) or why it does not.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
MARK = re.compile(r"^<!--\s*(not-run|e2e|serve|output)\s*(?::\s*(.*?))?\s*-->$")
HEREDOC = re.compile(r"<<-?\s*['\"]?(\w+)['\"]?")
PLACEHOLDER = re.compile(r"<[^<>\n]+>")


@dataclass
class Command:
    text: str
    line: int
    expected: list[str] | None = None  # None: only its exit status is checked


@dataclass
class Block:
    page: str
    heading: str
    line: int
    lang: str
    body: list[str]
    marks: dict[str, str] = field(default_factory=dict)
    commands: list[Command] = field(default_factory=list)

    @property
    def first(self) -> str:
        return next((line for line in self.body if line.strip()), "")

    @property
    def where(self) -> str:
        if "not-run" in self.marks:
            return f"not run: {self.marks['not-run']}"
        return "serve" if "serve" in self.marks else "cluster"


def parse(page: str, text: str) -> list[Block]:
    """The page's fenced blocks, in order: sh blocks with their commands, text blocks as output."""
    blocks: list[Block] = []
    heading, fence, mark_line, lines = "", None, "", text.splitlines()
    for number, raw in enumerate(lines, 1):
        stripped = raw.strip()
        if fence is None:
            if stripped.startswith("```"):
                indent = len(raw) - len(raw.lstrip())
                fence = Block(page, heading, number, stripped[3:].strip(), [], _marks(mark_line))
                fence_indent = indent
            elif stripped.startswith("#"):
                heading = stripped.lstrip("#").strip()
            if stripped:
                mark_line = stripped
            continue
        if stripped.startswith("```"):
            blocks.append(fence)
            fence, mark_line = None, ""
            continue
        fence.body.append(raw[fence_indent:] if raw[:fence_indent].strip() == "" else raw)
    sh = [b for b in blocks if b.lang == "sh"]
    for b in sh:
        b.commands = commands(b.body, b.line + 1)
    for before, after in zip(blocks, blocks[1:], strict=False):
        gap = lines[before.line + len(before.body) + 1:after.line - 1]
        if before.lang == "sh" and after.lang == "text" and not "".join(gap).strip() and before.commands:
            before.commands[-1].expected = after.body
    return blocks


def _marks(line: str) -> dict[str, str]:
    m = MARK.match(line)
    return {m.group(1): m.group(2) or ""} if m else {}


def commands(body: list[str], first_line: int) -> list[Command]:
    """Commands with their `\\` continuations and here-documents; comment lines right after a command
    are its expected output; a comment after a blank line is prose."""
    out: list[Command] = []
    i, collecting = 0, False
    while i < len(body):
        line = body[i]
        if not line.strip():
            collecting, i = False, i + 1
            continue
        if line.lstrip().startswith("#"):
            if collecting:
                text = line.lstrip()[1:]
                expected = out[-1].expected if out[-1].expected is not None else []
                out[-1].expected = [*expected, text[1:] if text.startswith(" ") else text]
            i += 1
            continue
        start, parts = i, [line]
        while parts[-1].endswith("\\") and i + 1 < len(body):
            i += 1
            parts.append(body[i])
        for tag in HEREDOC.findall("\n".join(parts)):
            while i + 1 < len(body) and body[i].strip() != tag:
                i += 1
                parts.append(body[i])
        out.append(Command("\n".join(parts), first_line + start))
        collecting, i = True, i + 1
    return out


def matches(expected: list[str], actual: str) -> bool:
    """Line by line, runs of blanks as one; `<placeholder>` is any text within a line, `...` any lines."""
    pattern = ""
    for line in expected:
        norm = _norm(line)
        if norm == "...":
            pattern += r"(?:[^\n]*\n)*?"
            continue
        pieces = PLACEHOLDER.split(norm)
        pattern += r"[^\n]+?".join(re.escape(p) for p in pieces) + r"\n"
    text = "".join(_norm(line) + "\n" for line in actual.rstrip("\n").splitlines()) if actual.strip() else ""
    return re.fullmatch(pattern, text) is not None


def _norm(line: str) -> str:
    return re.sub(r"[ \t]+", " ", line.rstrip())


class Session:
    """One bash session in `cwd`: each command's exit status and output, in order."""

    def __init__(self, cwd: Path, env: dict[str, str], scratch: Path):
        self.scratch, self.count = scratch, 0
        self.proc = subprocess.Popen(["bash", "--noprofile", "--norc"], cwd=cwd, env=env, stdin=subprocess.PIPE,
                                     text=True, start_new_session=True)
        self._send("set -o pipefail\n")

    def _send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def run(self, command: str, timeout: float) -> tuple[int, str, str]:
        """Exit status, stdout, stderr (a terminal shows both; the docs show stdout)."""
        self.count += 1
        out, err, rc = (self.scratch / f"{name}.{self.count}" for name in ("out", "err", "rc"))
        self._send(f"{{ {command}\n}} > {out} 2> {err} < /dev/null\necho $? > {rc}.tmp && mv {rc}.tmp {rc}\n")
        deadline = time.monotonic() + timeout
        status = None
        while status is None:
            if rc.exists():
                status = int(rc.read_text())
            elif self.proc.poll() is not None:
                status = self.proc.returncode
            elif time.monotonic() > deadline:
                status = 124
            else:
                time.sleep(0.05)
        text = [f.read_text() if f.exists() else "" for f in (out, err)]
        return status, text[0], text[1] + (f"\n(no exit within {timeout:g} s)" if status == 124 and not rc.exists() else "")

    def close(self) -> None:
        """Ends the session and every job it left in the background (its whole process group)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def checkout_view(into: Path, state_dir: Path | None, demo_models: Path) -> Path:
    """A directory that looks like the checkout to a reader's commands (every top-level entry linked),
    with `.localcluster` and `demo_models` the harness's own."""
    into.mkdir(parents=True, exist_ok=True)
    for entry in ROOT.iterdir():
        if entry.name not in (".localcluster", "demo_models", ".git"):
            (into / entry.name).symlink_to(entry)
    (into / "demo_models").symlink_to(demo_models)
    if state_dir is not None:
        (into / ".localcluster").symlink_to(state_dir)
    return into


def reader_env() -> dict[str, str]:
    """A new shell's environment: none of a cluster's variables, no proxy."""
    drop = {"KUBECONFIG", "REST", "GRPC", "PROMETHEUS", "OPERATOR_METRICS", "OPERATOR_HEALTH"}
    return {k: v for k, v in os.environ.items() if k not in drop and k.lower() not in ("http_proxy", "https_proxy")}


def build_demo_models(out: Path) -> Path:
    """What `make demo-models` builds: the demo SavedModels and the two_versions warmup files."""
    if not (out / "models.config").exists():
        subprocess.run([sys.executable, "-m", "demomodels", "--out", str(out)], check=True, capture_output=True, timeout=600)
        warmup = shutil.which("model-server-warmup", path=str(Path(sys.executable).parent))
        for v in (1, 2):
            subprocess.run([str(warmup), str(out / "two_versions" / str(v)), "--batch_sizes", "1,2,4,8,16,32,64,128"],
                           check=True, capture_output=True, timeout=600)
    return out


def all_blocks() -> list[Block]:
    return [b for page in PAGES for b in parse(page, (ROOT / page).read_text())]


if __name__ == "__main__":
    slow: set[str] = set()
    for b in all_blocks():
        slow |= {b.page} if "e2e" in b.marks else set()
        where = b.where if b.where.startswith("not run") else f"{'e2e' if b.page in slow else 'test'} ({b.where})"
        if b.lang == "sh" or "output" in b.marks:
            print(f"{b.page}:{b.line}\t{b.heading}\t{b.first.strip()[:70]}\t{where}")
