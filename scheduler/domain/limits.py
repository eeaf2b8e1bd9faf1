"""Every bound on what callers may send, in one place: a setting (a field of ``Limits``, which
the wiring fills from the settings) or a named constant (a rule of the formats we accept).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# Names are DNS-1123 labels: Kubernetes derives pod and label names from them.
DNS_LABEL_MAX_LENGTH: Final = 63
# Kubernetes quantities ("500m", "1Gi"): longer text, or an exponent beyond this, is not one we
# take (far beyond anything Kubernetes represents, yet small for exact Decimal arithmetic).
QUANTITY_MAX_LENGTH: Final = 64
QUANTITY_EXPONENT_MAX: Final = 1000
# Container image references: docker's bound on the name; the whole reference (name, tag and a
# sha512 digest, with room to spare) bounds the work the reference grammar can be asked for.
IMAGE_NAME_MAX_LENGTH: Final = 255
IMAGE_REFERENCE_MAX_LENGTH: Final = 1024
# Sessions.
MAX_LABELS: Final = 64
LABEL_KEY_MAX_LENGTH: Final = 63
LABEL_VALUE_MAX_LENGTH: Final = 256
REQUEST_ID_MAX_LENGTH: Final = 128
# The runner protocol.
MAX_CREDITS: Final = 10_000  # in one ClaimStart or ClaimCredit
INSTANCE_ID_MAX_LENGTH: Final = 253  # a Kubernetes object name (pods are instances)


@dataclass(frozen=True, slots=True)
class Limits:
    """The bounds that are settings."""

    max_name: int = 63
    max_description: int = 4096
    max_dag_nodes: int = 100_000
    max_tasks_per_pod: int = 1024
    max_attempts: int = 100
    max_page_size: int = 1000
    default_page_size: int = 100
    max_parameters_bytes: int = 256 * 1024
    max_output_bytes: int = 1024 * 1024
    max_message_bytes: int = 64 * 1024 * 1024
    # Sessions larger than these come back without their nodes (they would not fit one
    # message): CreateSession acknowledges, GetSession shows up to the second bound, and
    # WatchSession streams every change.
    max_created_nodes_shown: int = 1_000
    max_nodes_shown: int = 10_000
