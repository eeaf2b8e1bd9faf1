"""The contract stays clean: buf lint, no breaking change against main, generated code current.

The generated code of every language (gen/python, gen/go, gen/ts) comes from these protos, so
the breaking check guards all of them; the staleness check makes sure they were regenerated.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUF = str(Path(sys.executable).parent / "buf")


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )


def test_buf_lint_passes() -> None:
    result = run(BUF, "lint")
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_breaking_change_against_main() -> None:
    # The working tree against the main branch of this clone: catches a breaking edit before
    # it is committed; on main itself it checks the tree against its own history.
    result = run(BUF, "breaking", "--against", ".git#branch=main")
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_code_is_current() -> None:
    result = run(sys.executable, "scripts/gen_protos.py", "--check")
    assert result.returncode == 0, result.stderr
