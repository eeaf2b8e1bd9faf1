"""Every bound on what callers may send, in one place: a setting (a field of ``Limits``, which
the wiring fills from the settings) or a named constant (a rule of the formats we accept).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Final

# -- Every request, at the transport's edge (scheduler.transport.bounds) ----------------------
# Any string field of a request; the domain bounds most of them much tighter (names, labels).
TEXT_MAX_LENGTH: Final = 64 * 1024
# JSON (google.protobuf.Struct / Value: configurations, parameters, outputs, details): objects
# and arrays nest at most this deep, keys are bounded, and strings, keys and numbers are what
# PostgreSQL's jsonb can store (no NUL, finite numbers). protobuf's own decoder refuses a
# message nested past 100 levels (about 30 JSON levels), before any of our code runs; the
# transport answers that with INVALID_ARGUMENT too.
JSON_MAX_DEPTH: Final = 20
JSON_KEY_MAX_LENGTH: Final = 1024
# google.protobuf.Timestamp and Duration as their definitions bound them (years 1 to 9999;
# ±10,000 years), so every value converts to Python and PostgreSQL time.
TIMESTAMP_MIN_SECONDS: Final = -62_135_596_800  # 0001-01-01T00:00:00Z
TIMESTAMP_MAX_SECONDS: Final = 253_402_300_799  # 9999-12-31T23:59:59Z
DURATION_MAX_SECONDS: Final = 315_576_000_000
# Error details travel in trailing metadata, which peers cap (8 KiB by default).
ERROR_MESSAGE_MAX_LENGTH: Final = 1000
ERROR_METADATA_VALUE_MAX_LENGTH: Final = 200


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
# JSON Schemas of node templates, and configurations (a template's defaults, a node's own).
SCHEMA_MAX_BYTES: Final = 64 * 1024
CONFIG_MAX_BYTES: Final = 256 * 1024
# Checking one DAG's configurations against their schemas may take this long, off the event
# loop; a DAG that takes longer is refused (simplify the schemas or split the Session).
VALIDATION_BUDGET: Final = timedelta(seconds=10)
# Sessions.
MAX_LABELS: Final = 64
LABEL_KEY_MAX_LENGTH: Final = 63
LABEL_VALUE_MAX_LENGTH: Final = 256
REQUEST_ID_MAX_LENGTH: Final = 128
# Sessions list: a page token names a row id, a PostgreSQL bigint.
BIGINT_MAX: Final = 2**63 - 1
# Registry durations and numbers: far beyond any real use, yet far inside what timestamps,
# intervals and floats hold (an attempt deadline, a retry time, a backoff never overflow).
MAX_ATTEMPT_TIMEOUT: Final = timedelta(days=30)
MAX_BACKOFF: Final = timedelta(days=1)
MAX_BACKOFF_MULTIPLIER: Final = 100.0
MAX_IDLE_PERIOD: Final = timedelta(days=30)
MAX_PODS: Final = 10_000
# The runner protocol.
MAX_CREDITS: Final = 10_000  # in one ClaimStart or ClaimCredit
MAX_RESULT_BATCH: Final = 1_000  # outcomes in one PostResult message
INSTANCE_ID_MAX_LENGTH: Final = 253  # a Kubernetes object name (pods are instances)
MAX_TEMPLATES_PER_CLAIM: Final = 1000  # node_templates of one ClaimStart
MAX_HEARTBEAT_ATTEMPTS: Final = 10_000  # attempt ids in one HeartbeatRequest
# PostResult answers a stream may be waiting for; past it the stream reads no more requests
# until an answer leaves (back-pressure, not an error).
MAX_PENDING_RESULTS: Final = 1000
# A failure a runner posts: its message and its details (as JSON) are stored and shown.
FAILURE_MESSAGE_MAX_LENGTH: Final = 16 * 1024
FAILURE_DETAILS_MAX_BYTES: Final = 64 * 1024
RELEASE_REASON_MAX_LENGTH: Final = 1024
# A cancel reason (CancelSession, CancelNode).
REASON_MAX_LENGTH: Final = 1024
# Artefacts: content moves in chunks; what we send, and the most one message may carry.
ARTIFACT_CHUNK_BYTES: Final = 1024 * 1024
ARTIFACT_CHUNK_MAX_BYTES: Final = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    """The bounds that are settings."""

    max_name: int = 63
    max_description: int = 4096
    max_dag_nodes: int = 100_000
    max_tasks_per_pod: int = 1024
    # The operator's ceiling of any Runner's min_pods and max_pods (--max-runner-pods).
    max_runner_pods: int = 100
    max_attempts: int = 100
    max_page_size: int = 1000
    default_page_size: int = 100
    max_parameters_bytes: int = 256 * 1024
    max_output_bytes: int = 1024 * 1024
    max_artifact_bytes: int = 1024 * 1024 * 1024
    max_message_bytes: int = 64 * 1024 * 1024
    # A task carries its upstream outputs, its configuration and the Session's parameters; a
    # node whose task would not fit one message (less this margin for the rest of the Task)
    # fails with a clear error instead of being claimed.
    task_margin_bytes: int = 64 * 1024

    @property
    def max_task_bytes(self) -> int:
        return self.max_message_bytes - self.task_margin_bytes

    # Sessions larger than these come back without their nodes (they would not fit one
    # message): CreateSession acknowledges, GetSession shows up to the second bound, and
    # WatchSession streams every change.
    max_created_nodes_shown: int = 1_000
    max_nodes_shown: int = 10_000
