"""Text-in/text-out pass tests (the MLIR habit): every ``tests/filecheck/*.attn`` file
carries its own ``// RUN:`` lines and ``// CHECK`` lines; this runner is a tiny lit.

For each file, each RUN line (a trailing ``\\`` continues it on the next RUN line) is
run with bash (``set -o pipefail``) after these substitutions:

    %s   the .attn file            %S   its directory
    %t   a temporary path (unique per file)

and with a directory put first on PATH that holds three shims, so the tests run
whatever Python runs pytest (no install needed):

    attncc     python -m attncc
    filecheck  python -m filecheck
    not        LLVM's ``not``: succeeds when the command fails (a non-zero exit that is
               not a signal), fails when the command succeeds

A file passes when every RUN line exits 0.  One pytest case per file.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
CHECK_DIR = HERE / "filecheck"
REPO = HERE.parent
FILES = sorted(CHECK_DIR.glob("*.attn"))

_NOT = '''\
import subprocess, sys
if len(sys.argv) < 2:
    sys.exit("usage: not COMMAND [ARGS...]")
rc = subprocess.call(sys.argv[1:])
# LLVM's not: a crash (killed by a signal) is a failure too
sys.exit(0 if rc > 0 else 1)
'''


def _shim(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text(body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@pytest.fixture(scope="session")
def shim_path(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("shims")
    py = sys.executable
    _shim(d, "attncc", f'#!/bin/sh\nexec "{py}" -m attncc "$@"\n')
    _shim(d, "filecheck", f'#!/bin/sh\nexec "{py}" -m filecheck "$@"\n')
    (d / "not.py").write_text(_NOT)
    _shim(d, "not", f'#!/bin/sh\nexec "{py}" "{d / "not.py"}" "$@"\n')
    return d


def run_lines(path: Path) -> list[str]:
    """The commands of a file's RUN lines, continuations joined."""
    out: list[str] = []
    pending = ""
    for line in path.read_text().splitlines():
        m = re.match(r"\s*//\s*RUN:(.*)$", line)
        if not m:
            continue
        text = m.group(1).strip()
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        out.append(pending + text)
        pending = ""
    if pending:
        out.append(pending)
    return out


def substitute(cmd: str, path: Path, tmp: Path) -> str:
    subs = {"%s": str(path), "%S": str(path.parent), "%t": str(tmp)}
    return re.sub(r"%[sSt]", lambda m: subs[m.group(0)], cmd)


def check_prefixes(cmd: str) -> list[str]:
    """The check prefixes a RUN line's filecheck uses (CHECK unless --check-prefix)."""
    if "filecheck" not in cmd:
        return []
    found = re.findall(r"--check-prefix(?:es)?[= ]([A-Za-z0-9_,-]+)", cmd)
    return [p for group in found for p in group.split(",")] or ["CHECK"]


def test_every_file_has_run_and_check_lines():
    """Guards the runner against vacuous files: each RUN line pipes into filecheck, and
    each prefix it checks has at least one positive check line in the file."""
    assert FILES, f"no .attn files in {CHECK_DIR}"
    for f in FILES:
        text = f.read_text()
        cmds = run_lines(f)
        assert cmds, f"{f.name} has no RUN line"
        for cmd in cmds:
            prefixes = check_prefixes(cmd)
            assert prefixes, f"{f.name}: RUN line does not pipe into filecheck: {cmd}"
            for p in prefixes:
                assert re.search(rf"//\s*{re.escape(p)}(?:-NEXT|-SAME|-DAG|-LABEL|-COUNT-\d+)?:", text), \
                    f"{f.name}: no '{p}:' check line for: {cmd}"


@pytest.mark.parametrize("path", FILES, ids=[f.name for f in FILES])
def test_filecheck(path: Path, shim_path: Path, tmp_path: Path):
    env = dict(os.environ)
    env["PATH"] = f"{shim_path}{os.pathsep}{env.get('PATH', '')}"
    # the shims run `python -m attncc`: make the package importable without an install
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(REPO)
    env.pop("FILECHECK_OPTS", None)
    for cmd in run_lines(path):
        full = substitute(cmd, path, tmp_path / "t")
        proc = subprocess.run(["bash", "-o", "pipefail", "-c", full], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, (
            f"{path.name}: RUN line failed (exit {proc.returncode})\n  $ {full}\n"
            f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}")


def test_pipeline_file_runs_the_default_pipeline():
    """pipeline-default.attn spells the default pipeline out: keep it the real one."""
    from attncc.passes.pipeline import DEFAULT_PIPELINE
    cmds = run_lines(CHECK_DIR / "pipeline-default.attn")
    assert all(f"--pass {DEFAULT_PIPELINE} " in c or c.endswith(f"--pass {DEFAULT_PIPELINE}") for c in cmds), \
        f"update pipeline-default.attn to the default pipeline {DEFAULT_PIPELINE}"
