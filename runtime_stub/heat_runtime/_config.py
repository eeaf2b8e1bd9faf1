"""The runtime's settings: constructor arguments, else environment variables, else defaults.

Every setting a runner container is given through its environment has one ``HEAT_*``
variable; the rest (timings of the protocol) are constructor arguments for tests and embedding.
A bad value raises ``ConfigError`` naming the variable (or argument) and what is accepted.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import secrets
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypedDict, Unpack

from heat_runtime._errors import ConfigError

__all__ = [
    "DEFAULT_MAX_RESULT_BYTES",
    "ENVIRONMENT",
    "RuntimeConfig",
    "RuntimeSettings",
    "default_instance_id",
]

LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")

# Field name -> environment variable, for the settings a container gets through its env.
ENVIRONMENT: Final = {
    "address": "HEAT_SCHEDULER_ADDRESS",
    "runner": "HEAT_RUNNER",
    "credential": "HEAT_RUNNER_CREDENTIAL",
    "capacity": "HEAT_CAPACITY",
    "instance_id": "HEAT_INSTANCE_ID",
    "drain_timeout": "HEAT_DRAIN_TIMEOUT",
    "log_level": "HEAT_LOG_LEVEL",
    "tls_ca": "HEAT_TLS_CA",
    "tls_cert": "HEAT_TLS_CERT",
    "tls_key": "HEAT_TLS_KEY",
    "inline_file_bytes": "HEAT_INLINE_FILE_BYTES",
}

_MAX_CAPACITY: Final = 10_000
DEFAULT_INLINE_FILE_BYTES: Final = 16 * 1024 * 1024
# The scheduler's default message limit is 4 MiB; leave room for the rest of the message.
DEFAULT_MAX_RESULT_BYTES: Final = 4 * 1024 * 1024 - 16 * 1024
_ADDRESS: Final = re.compile(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.\-_]+):(\d{1,5})")
# gRPC target forms other than host:port that a runner may reasonably be given.
_TARGET_SCHEMES: Final = ("dns:", "unix:", "unix-abstract:", "ipv4:", "ipv6:")
_DNS_LABEL: Final = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_INSTANCE_ID: Final = re.compile(r"[\x21-\x7e]{1,253}")
# HTTP/2 header values: visible ASCII; a credential is one token, so no spaces either.
_CREDENTIAL: Final = re.compile(r"[\x21-\x7e]*")


def default_instance_id(env: Mapping[str, str]) -> str:
    """``$HOSTNAME`` (a pod's name) when set, else ``<hostname>-<pid>-<random>``."""
    hostname = env.get("HOSTNAME", "").strip()
    if hostname:
        return hostname
    return f"{socket.gethostname() or 'runner'}-{os.getpid()}-{secrets.token_hex(3)}"


class RuntimeSettings(TypedDict, total=False):
    """Keyword arguments of ``Runtime(...)``/``RuntimeConfig.from_env(...)``: RuntimeConfig's
    fields."""

    address: str
    runner: str
    credential: str
    capacity: int
    instance_id: str
    drain_timeout: float
    log_level: str
    tls_ca: str
    tls_cert: str
    tls_key: str
    heartbeat_interval: float
    reconnect_initial: float
    reconnect_max: float
    ack_grace: float
    max_result_bytes: int
    inline_file_bytes: int


@dataclass(frozen=True, kw_only=True)
class RuntimeConfig:
    """How a runtime connects and behaves. Build it directly (every field checked) or with
    ``RuntimeConfig.from_env()``; ``Runtime(...)`` takes the same fields as keywords."""

    address: str = "127.0.0.1:50051"
    """HEAT_SCHEDULER_ADDRESS: the scheduler's gRPC address, ``host:port``."""
    runner: str = ""
    """HEAT_RUNNER (required): the name of the Runner this instance serves."""
    credential: str = dataclasses.field(default="", repr=False)
    """HEAT_RUNNER_CREDENTIAL: the Runner's secret, sent as ``authorization: Bearer <secret>``
    on every call; empty sends no authorization metadata."""
    capacity: int = 1
    """HEAT_CAPACITY: how many tasks this instance processes at once."""
    instance_id: str = ""
    """HEAT_INSTANCE_ID: unique id of this instance; empty means $HOSTNAME (a pod's name) or
    ``<hostname>-<pid>-<random>``."""
    drain_timeout: float = 30.0
    """HEAT_DRAIN_TIMEOUT: seconds held tasks get to finish when draining before they are
    handed back."""
    log_level: str = "INFO"
    """HEAT_LOG_LEVEL: DEBUG, INFO, WARNING or ERROR."""
    tls_ca: str = ""
    """HEAT_TLS_CA: CA bundle (a PEM file, or the PEM text itself) the scheduler's certificate
    is checked against; setting any HEAT_TLS_* turns TLS on (with none of them: plaintext)."""
    tls_cert: str = ""
    """HEAT_TLS_CERT: client certificate (PEM file or text) for a scheduler that requires mTLS."""
    tls_key: str = dataclasses.field(default="", repr=False)
    """HEAT_TLS_KEY: the client certificate's private key (PEM file or text)."""
    heartbeat_interval: float = 10.0
    """Seconds between heartbeats until the scheduler states its own interval."""
    reconnect_initial: float = 0.1
    """First delay before reconnecting, in seconds; doubles per failure, with jitter."""
    reconnect_max: float = 5.0
    """Longest delay between reconnection attempts, in seconds."""
    ack_grace: float = 10.0
    """Seconds a drain waits, after its deadline, for the scheduler to acknowledge the results
    and hand-backs it posted; then the runtime exits anyway (unacknowledged leases expire)."""
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES
    """Largest result message posted; larger outputs fail the task permanently instead of
    breaking the stream (the scheduler's default message limit is 4 MiB)."""
    inline_file_bytes: int = DEFAULT_INLINE_FILE_BYTES
    """HEAT_INLINE_FILE_BYTES: file inputs up to this size reach the hooks as ``bytes``; larger
    ones as a binary file object, spooled to a temporary file (never held whole in memory)."""

    @property
    def tls(self) -> bool:
        return bool(self.tls_ca or self.tls_cert)

    def tls_files(self) -> tuple[bytes | None, bytes | None, bytes | None]:
        """(CA, key, certificate chain) as PEM bytes, each None when not given."""
        return (
            _pem(self.tls_ca, "HEAT_TLS_CA"),
            _pem(self.tls_key, "HEAT_TLS_KEY"),
            _pem(self.tls_cert, "HEAT_TLS_CERT"),
        )

    def __post_init__(self) -> None:
        if not self.instance_id:
            object.__setattr__(self, "instance_id", default_instance_id(os.environ))
        object.__setattr__(self, "log_level", str(self.log_level).upper())
        for field in dataclasses.fields(self):
            check = _CHECKS.get(field.name)
            problem = check(getattr(self, field.name)) if check else None
            if problem:
                raise ConfigError(f"{_setting_name(field.name)}: {problem}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError(
                "tls_cert (HEAT_TLS_CERT) and tls_key (HEAT_TLS_KEY) go together: give both for"
                " mTLS, or neither"
            )
        self.tls_files()  # unreadable files are a configuration error, at once
        if self.reconnect_max < self.reconnect_initial:
            raise ConfigError(
                f"reconnect_max: {self.reconnect_max!r} is less than reconnect_initial"
                f" ({self.reconnect_initial!r}); use a cap at least as long as the first delay"
            )

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, **settings: Unpack[RuntimeSettings]
    ) -> RuntimeConfig:
        """Settings from ``env`` (default ``os.environ``), under the given keyword arguments.

        Empty variables count as unset, except HEAT_RUNNER_CREDENTIAL (empty: no credential).
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name, variable in ENVIRONMENT.items():
            raw = env.get(variable)
            if raw is None or (not raw.strip() and name != "credential"):
                continue
            values[name] = _parse(name, variable, raw.strip())
        if "instance_id" not in values:
            values["instance_id"] = default_instance_id(env)
        values.update(settings)
        if not values.get("runner"):
            raise ConfigError(
                "HEAT_RUNNER is not set; set it to the name of the Runner this instance serves,"
                " e.g. HEAT_RUNNER=csv-runner"
            )
        try:
            return cls(**values)
        except TypeError as error:  # an unknown keyword argument
            raise ConfigError(str(error)) from None


def _pem(value: str, variable: str) -> bytes | None:
    """PEM text given inline, or read from the file it names."""
    if not value:
        return None
    if value.lstrip().startswith("-----BEGIN"):
        return value.encode()
    try:
        with open(value, "rb") as f:  # noqa: PTH123 (one small file)
            return f.read()
    except OSError as error:
        raise ConfigError(f"{variable}: cannot read {value[:200]!r}: {error.strerror}") from None


def _setting_name(field: str) -> str:
    variable = ENVIRONMENT.get(field)
    return f"{field} ({variable})" if variable else field


def _parse(name: str, variable: str, raw: str) -> Any:
    parser = _PARSERS.get(name)
    if parser is None:
        return raw
    try:
        return parser(raw)
    except ValueError as error:
        raise ConfigError(f"{variable}: {raw[:80]!r} {error}") from None


def _whole_number(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError(
            f"is not a whole number; use a number of tasks from 1 to {_MAX_CAPACITY}, e.g. 4"
        ) from None


def _seconds(raw: str) -> float:
    try:
        return float(raw.removesuffix("s"))
    except ValueError:
        raise ValueError("is not a duration; use seconds such as 30 or 2.5s") from None


def _bytes(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError("is not a whole number of bytes, e.g. 16777216") from None


_PARSERS: Final[dict[str, Callable[[str], Any]]] = {
    "capacity": _whole_number,
    "inline_file_bytes": _bytes,
    "drain_timeout": _seconds,
}


def _check_address(value: object) -> str | None:
    if isinstance(value, str):
        if value.startswith(_TARGET_SCHEMES) and len(value) > 5:
            return None
        match = _ADDRESS.fullmatch(value)
        if match and 0 < int(match.group(2)) <= 65535:
            return None
    return (
        f"{str(value)[:80]!r} is not a scheduler address; use host:port, e.g. 127.0.0.1:50051"
        " or heat-scheduler.heat.svc:50051 (or a gRPC target such as unix:///run/heat.sock)"
    )


def _check_runner(value: object) -> str | None:
    if not value:
        return (
            "is required: the name of the Runner this instance serves, e.g. csv-runner"
            " (set HEAT_RUNNER)"
        )
    if not isinstance(value, str) or not _DNS_LABEL.fullmatch(value):
        return (
            f"{str(value)[:80]!r} is not a Runner name; Runner names are DNS-1123 labels:"
            " 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit"
        )
    return None


def _check_credential(value: object) -> str | None:
    if not isinstance(value, str) or not _CREDENTIAL.fullmatch(value):
        return (
            "holds a space, a control or a non-ASCII character; use the secret exactly as"
            " IssueRunnerCredential returned it (heatrc_...), or leave it empty"
        )
    return None


def _check_capacity(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_CAPACITY:
        return f"{value!r} is out of range; use a number of tasks from 1 to {_MAX_CAPACITY}"
    return None


def _check_instance_id(value: object) -> str | None:
    if not isinstance(value, str) or not _INSTANCE_ID.fullmatch(value):
        return (
            f"{str(value)[:80]!r} is not an instance id; use 1-253 visible ASCII characters"
            " without spaces, e.g. the pod's name"
        )
    return None


def _seconds_check(minimum: float, *, inclusive: bool) -> Callable[[object], str | None]:
    def check(value: object) -> str | None:
        ok = (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value)
            and (value >= minimum if inclusive else value > minimum)
        )
        if ok:
            return None
        bound = f"{minimum:g} or more" if inclusive else f"more than {minimum:g}"
        return f"{value!r} is not a usable duration; use seconds, {bound}, e.g. 30 or 2.5"

    return check


def _check_log_level(value: object) -> str | None:
    if value not in LOG_LEVELS:
        return f"{str(value)[:40]!r} is not a log level; use one of {', '.join(LOG_LEVELS)}"
    return None


def _check_max_result_bytes(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1024:
        return f"{value!r} is too small; use a number of bytes, 1024 or more"
    return None


def _check_inline_file_bytes(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return f"{value!r} is not a size; use a number of bytes, 0 (always a file) or more"
    return None


_CHECKS: Final[dict[str, Callable[[object], str | None]]] = {
    "inline_file_bytes": _check_inline_file_bytes,
    "address": _check_address,
    "runner": _check_runner,
    "credential": _check_credential,
    "capacity": _check_capacity,
    "instance_id": _check_instance_id,
    "drain_timeout": _seconds_check(0.0, inclusive=True),
    "log_level": _check_log_level,
    "heartbeat_interval": _seconds_check(0.0, inclusive=False),
    "reconnect_initial": _seconds_check(0.0, inclusive=False),
    "reconnect_max": _seconds_check(0.0, inclusive=False),
    "ack_grace": _seconds_check(0.0, inclusive=True),
    "max_result_bytes": _check_max_result_bytes,
}
