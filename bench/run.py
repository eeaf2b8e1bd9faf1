"""The one command: ``.venv/bin/python bench/run.py [--quick] [--only NAME ...] [--out FILE]``.

See bench/README.md. Run from anywhere; it puts the repository root on the import path.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.main import main

if __name__ == "__main__":
    sys.exit(main())
