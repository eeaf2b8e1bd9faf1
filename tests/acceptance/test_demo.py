"""The README's demo: scheduler, example runner as a local process, a Session, its outputs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support import free_port

ROOT = Path(__file__).resolve().parent.parent.parent


def test_demo_runs_the_example_end_to_end(open_tmp_path: Path) -> None:
    env = {
        **os.environ,
        "HEAT_LISTEN": f"127.0.0.1:{free_port()}",
        "HEAT_DATA_DIR": str(open_tmp_path / "heat-data"),
    }
    result = subprocess.run(
        [str(ROOT / "scripts" / "demo")],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "succeeded: 3/3 succeeded" in out
    assert '"total":451.25' in out
    assert "created instance csv-runner-" in out, "a runner process was started for the work"
    assert "draining idle instance csv-runner-" in out, "and let go once idle"
