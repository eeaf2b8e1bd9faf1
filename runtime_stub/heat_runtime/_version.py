"""The runtime's version, sent in ClaimStart for operators."""

from __future__ import annotations

import importlib.metadata

try:
    VERSION = importlib.metadata.version("heat-runtime")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a source tree
    VERSION = "0+unknown"
