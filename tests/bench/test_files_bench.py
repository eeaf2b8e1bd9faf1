"""bench/files.py runs end to end at a small size (its figures are not checked: not a bench)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_files_bench_moves_a_file_through_and_reports() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "files.py"), "--mib", "4", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    figures = json.loads(done.stdout.splitlines()[-1])
    assert figures["digests_agree"] and figures["state"] == "SESSION_STATE_SUCCEEDED"
    assert figures["scheduler_rss_peak_mib"] >= figures["scheduler_rss_before_mib"] > 0
