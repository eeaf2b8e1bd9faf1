"""Settings: command-line flag, else environment variable, else the embedded default.

Every setting has one environment variable (HEAT_*) and one flag; a bad value names both
and says what would be accepted.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Final

LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS: Final = ("text", "json")
PROVISIONERS: Final = ("local", "kubernetes", "none")
REFLECTION: Final = ("auto", "on", "off")
LOOPBACK_HOSTS: Final = ("localhost", "::1", "[::1]")


class SettingsError(Exception):
    """A setting has a value that cannot be used; the message names the setting."""


def _address(value: str) -> str:
    match = re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.\-]+):(\d{1,5})", value)
    if not match or not 0 <= int(match.group(2)) <= 65535:
        raise ValueError(
            "is not a host:port address; e.g. 127.0.0.1:50051, 0.0.0.0:50051, [::]:50051"
        )
    return value


def _database_url(value: str) -> str:
    if value and not re.match(r"^postgres(ql)?://", value):
        raise ValueError(
            "is not a PostgreSQL URL; use postgresql://user:password@host:5432/database, "
            "or leave it empty to run an embedded PostgreSQL"
        )
    return value


def parse_commands(value: str) -> dict[str, list[str]]:
    """``name=command; name=command`` into argv lists; ValueError saying what is wrong."""
    commands: dict[str, list[str]] = {}
    for entry in (e.strip() for e in value.split(";")):
        if not entry:
            continue
        name, sep, command = entry.partition("=")
        if not sep or not name.strip() or not command.strip():
            raise ValueError(
                f"{entry!r} is not RUNNER=COMMAND; "
                "e.g. csv-runner=python examples/csv_sum/runner.py"
            )
        commands[name.strip()] = shlex.split(command)
    return commands


def parse_weights(value: str) -> tuple[tuple[str, float], ...]:
    """``key=weight, key=weight`` into pairs; ValueError saying what is wrong."""
    weights: dict[str, float] = {}
    for entry in (e.strip() for e in value.split(",")):
        if not entry:
            continue
        key, sep, number = (part.strip() for part in entry.partition("="))
        try:
            weight = float(number) if sep and key else -1.0
        except ValueError:
            weight = -1.0
        if not 0 < weight < float("inf"):
            raise ValueError(
                f"{entry!r} is not KEY=WEIGHT with a weight above 0; e.g. finance=3,research=1"
            )
        weights[key] = weight
    return tuple(weights.items())


def _weights(value: str) -> str:
    parse_weights(value)
    return value


def _label_key(value: str) -> str:
    if not 0 < len(value) <= 63:
        raise ValueError("is not a label key of 1 to 63 characters")
    return value


def _ratio(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError("is not a number; e.g. 10") from None
    if not 1 <= number <= 1e6:
        raise ValueError("must be from 1 (levels share equally) to 1000000")
    return number


def _bool(value: str) -> bool:
    word = value.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    raise ValueError("is not true or false")


def _local_runners(value: str) -> str:
    parse_commands(value)
    return value


def _label(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", value):
        raise ValueError("is not a DNS label; use lower-case letters, digits and '-'")
    return value


def _pod_template(value: str) -> str:
    if value and not Path(value).is_file():
        raise ValueError("is not a file; give a YAML or JSON PodTemplateSpec")
    return value


def _advertised(value: str) -> str:
    return _address(value) if value else value


def _seconds(value: str) -> float:
    try:
        seconds = float(value.removesuffix("s"))
    except ValueError:
        raise ValueError("is not a duration; use seconds such as 10 or 2.5s") from None
    if seconds < 0:
        raise ValueError("must not be negative")
    return seconds


def _boolean(value: str) -> bool:
    text = value.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("is not a yes/no value; use true or false")


def _file(value: str) -> str:
    if value and not Path(value).is_file():
        raise ValueError("is not a file that exists")
    return value


def _names(value: str) -> str:
    for name in (n.strip() for n in value.split(",")):
        if name and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"{name!r} is not an environment variable name; e.g. PYTHONPATH,HOME")
    return value


_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _retention(value: str) -> float | None:
    """Seconds (``7d``, ``12h``, ``30m``, ``45s``, ``90``), or None for ``never``."""
    if value.strip().lower() == "never":
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", value.lower())
    if not match:
        raise ValueError("is not a duration; use 7d, 12h, 30m, 45s, seconds, or never")
    return float(match.group(1)) * _UNITS.get(match.group(2) or "s", 1)


def _artifact_store(value: str) -> str:
    if value.startswith("s3://"):
        bucket, _, _prefix = value.removeprefix("s3://").partition("/")
        if not re.fullmatch(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]", bucket):
            raise ValueError("is not s3://bucket[/prefix] with a valid bucket name")
    elif "://" in value and not value.startswith("file://"):
        raise ValueError("is not a folder, file:///folder or s3://bucket[/prefix]")
    return value


def _endpoint(value: str) -> str:
    if value and not re.match(r"^https?://[^/\s]+/?$", value):
        raise ValueError("is not an http(s)://host[:port] endpoint")
    return value.rstrip("/")


def _sources(value: str) -> str:
    for prefix in (p.strip() for p in value.split(",")):
        if prefix and not re.match(r"^(file|s3)://", prefix):
            raise ValueError(f"has {prefix!r}: prefixes are file:///folder or s3://bucket/prefix")
    return value


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ValueError("is not a whole number") from None
    if number < 1:
        raise ValueError("must be 1 or more")
    return number


def _choice(options: Sequence[str], *, upper: bool = False) -> Callable[[str], str]:
    def parse(value: str) -> str:
        value = value.upper() if upper else value.lower()
        if value not in options:
            raise ValueError("is not one of: " + ", ".join(options))
        return value

    return parse


@dataclass(frozen=True, slots=True)
class Settings:
    listen: str = "127.0.0.1:50051"
    database_url: str = ""
    data_dir: Path = Path("heat-data")
    shutdown_grace: float = 10.0
    log_level: str = "INFO"
    log_format: str = "text"
    max_message_bytes: int = 64 * 1024 * 1024
    max_dag_nodes: int = 100_000
    db_pool_size: int = 20
    lease_duration: float = 30.0
    heartbeat_interval: float = 10.0
    leader_lease: float = 10.0
    leader_renew_interval: float = 2.0
    max_output_bytes: int = 1024 * 1024
    provisioner: str = "local"
    local_runners: str = ""
    scheduler_name: str = "heat-scheduler"
    advertise_address: str = ""
    k8s_namespace: str = ""
    kubeconfig: str = ""
    k8s_context: str = ""
    k8s_pod_template: str = ""
    grpc_keepalive_time: float = 30.0
    grpc_keepalive_timeout: float = 10.0
    grpc_max_connection_age: float = 0.0
    grpc_max_connection_age_grace: float = 60.0
    server_cert: str = ""
    server_key: str = ""
    client_ca: str = ""
    client_roles: str = ""
    insecure: bool = False
    health_listen: str = ""
    reflection: str = "auto"
    admin_token_file: str = ""
    runner_tls_ca: str = ""
    runner_tls_cert: str = ""
    runner_tls_key: str = ""
    max_runner_pods: int = 100
    local_max_processes: int = 32
    local_runner_env: str = ""
    metrics_listen: str = ""
    artifact_store: str = ""
    max_artifact_bytes: int = 1024 * 1024 * 1024
    artifact_retention: float | None = 7 * 86400.0
    artifact_sources: str = ""
    s3_endpoint: str = ""
    s3_region: str = "us-east-1"
    s3_access_key_id: str = ""
    s3_secret_access_key: str = ""
    s3_session_token: str = ""
    fairness_label: str = "team"
    fairness_weights: str = ""
    priority_ratio: float = 10.0
    strict_priority: bool = False
    critical_path: bool = True

    @property
    def tls(self) -> bool:
        return bool(self.server_cert)

    @property
    def loopback(self) -> bool:
        """Whether the listen address is this machine's loopback only."""
        host = self.listen.rsplit(":", 1)[0]
        return host in LOOPBACK_HOSTS or host.startswith("127.")

    @property
    def reflection_on(self) -> bool:
        return self.reflection == "on" or (self.reflection == "auto" and self.loopback)

    def admin_token_path(self) -> Path:
        """Where the first admin token is read from (or, by default, written to)."""
        return (
            Path(self.admin_token_file)
            if self.admin_token_file
            else self.data_dir / ADMIN_TOKEN_FILE
        )


# The first admin token's file in the data folder, unless admin_token_file names another.
ADMIN_TOKEN_FILE: Final = "admin-token"  # noqa: S105 (a file name, not a secret)


@dataclass(frozen=True, slots=True)
class _Spec:
    parse: Callable[[str], Any]
    help: str


_SPECS: Final[Mapping[str, _Spec]] = {
    "listen": _Spec(_address, "host:port the gRPC server listens on"),
    "database_url": _Spec(
        _database_url, "PostgreSQL URL; empty runs an embedded PostgreSQL under data_dir"
    ),
    "data_dir": _Spec(
        Path,
        "folder of the embedded PostgreSQL's data and of the local provisioner's records of"
        " its runner processes (kept across restarts)",
    ),
    "shutdown_grace": _Spec(_seconds, "seconds in-flight calls get to finish on SIGTERM"),
    "log_level": _Spec(_choice(LOG_LEVELS, upper=True), "one of " + ", ".join(LOG_LEVELS)),
    "log_format": _Spec(_choice(LOG_FORMATS), "text, or json for one JSON object per line"),
    "max_message_bytes": _Spec(_positive_int, "largest gRPC message accepted, in bytes"),
    "max_dag_nodes": _Spec(_positive_int, "most nodes in one DAG"),
    "db_pool_size": _Spec(_positive_int, "most PostgreSQL connections of this replica"),
    "lease_duration": _Spec(
        _seconds, "seconds a task's lease lasts without a heartbeat before it is retried"
    ),
    "heartbeat_interval": _Spec(_seconds, "seconds between a runner's heartbeats"),
    "leader_lease": _Spec(
        _seconds,
        "seconds a replica leads the timekeeper or provisioning without renewing; another "
        "replica takes over at most this long after the leader stops (paused, cut off)",
    ),
    "leader_renew_interval": _Spec(
        _seconds, "seconds between the leader's renewals of its lease (at most 1/3 of it)"
    ),
    "max_output_bytes": _Spec(_positive_int, "largest task output accepted, in bytes"),
    "provisioner": _Spec(
        _choice(PROVISIONERS),
        "who starts runner instances: local (processes here), kubernetes (pods), none",
    ),
    "local_runners": _Spec(
        _local_runners,
        "local provisioner: RUNNER=COMMAND[;RUNNER=COMMAND…], the command of each Runner",
    ),
    "scheduler_name": _Spec(_label, "names this scheduler's instances (pod labels)"),
    "advertise_address": _Spec(
        _advertised, "host:port runner instances dial; default the listen address"
    ),
    "k8s_namespace": _Spec(str, "kubernetes: namespace of runner pods (default: in-cluster's)"),
    "kubeconfig": _Spec(str, "kubernetes: kubeconfig file (default: in-cluster, ~/.kube/config)"),
    "k8s_context": _Spec(str, "kubernetes: kubeconfig context (default: the current one)"),
    "k8s_pod_template": _Spec(
        _pod_template,
        "kubernetes: YAML/JSON PodTemplateSpec merged into every runner pod (pull secrets, "
        "node selector, tolerations, …)",
    ),
    "grpc_keepalive_time": _Spec(
        _seconds, "seconds between keepalive pings on an idle connection (0: none)"
    ),
    "grpc_keepalive_timeout": _Spec(_seconds, "seconds a keepalive ping may go unanswered"),
    "grpc_max_connection_age": _Spec(
        _seconds,
        "seconds after which a connection is asked to go (so runner streams spread over new "
        "replicas after a rollout); 0: never",
    ),
    "grpc_max_connection_age_grace": _Spec(
        _seconds, "seconds calls get, after max connection age, before the connection is cut"
    ),
    "server_cert": _Spec(_file, "PEM certificate (chain) the server presents; turns TLS on"),
    "server_key": _Spec(_file, "PEM private key of server_cert"),
    "client_ca": _Spec(
        _file, "PEM CA bundle of client certificates; when set, every client must present one"
    ),
    "client_roles": _Spec(
        str,
        "client certificates' roles: ROLE:NAME[;ROLE:NAME…], NAME a subject (CN=heat-api) or "
        "an alternative name (spiffe://heat/ns/web/sa/api), ROLE admin, operator or viewer",
    ),
    "insecure": _Spec(
        _boolean, "allow plaintext gRPC on an address other than loopback (not recommended)"
    ),
    "health_listen": _Spec(
        _advertised,
        "host:port of a plaintext listener serving only the health service (Kubernetes' gRPC "
        "probes speak no TLS); empty: none",
    ),
    "reflection": _Spec(
        _choice(REFLECTION), "server reflection: auto (on when listening on loopback), on, off"
    ),
    "admin_token_file": _Spec(
        str,
        "file holding the first admin token (e.g. a mounted Secret); default: data_dir/"
        + "admin-token, created 0600 at first start",
    ),
    "runner_tls_ca": _Spec(
        _file, "CA bundle instances trust for the scheduler's certificate (their HEAT_TLS_CA)"
    ),
    "runner_tls_cert": _Spec(
        _file, "client certificate local instances present under mTLS (their HEAT_TLS_CERT)"
    ),
    "runner_tls_key": _Spec(_file, "key of runner_tls_cert (their HEAT_TLS_KEY)"),
    "max_runner_pods": _Spec(_positive_int, "ceiling of any Runner's min_pods and max_pods"),
    "local_max_processes": _Spec(
        _positive_int, "local provisioner: most runner processes at once, all Runners together"
    ),
    "local_runner_env": _Spec(
        _names,
        "local provisioner: NAME[,NAME…] of further variables runner processes inherit "
        "(besides PATH, HOME, locale, OTEL_* and the HEAT_* they are given)",
    ),
    "metrics_listen": _Spec(
        _advertised,
        "host:port of the Prometheus metrics endpoint (HTTP, its own port); empty: none",
    ),
    "artifact_store": _Spec(
        _artifact_store,
        "where files of Sessions live: a folder (default: data_dir/artifacts) or"
        " s3://bucket[/prefix] (with s3_endpoint)",
    ),
    "max_artifact_bytes": _Spec(_positive_int, "largest file (upload, URI or output), in bytes"),
    "artifact_retention": _Spec(
        _retention, "how long a Session's files outlive its end: 7d, 12h, 30m, or never"
    ),
    "artifact_sources": _Spec(
        _sources,
        "URI prefixes CreateSession may read files from, comma-separated"
        " (file:///srv/inputs,s3://bucket/inputs); empty: none",
    ),
    "s3_endpoint": _Spec(_endpoint, "S3-compatible endpoint, http(s)://host[:port]"),
    "s3_region": _Spec(str, "S3 region the requests are signed for"),
    "s3_access_key_id": _Spec(str, "S3 access key id"),
    "s3_secret_access_key": _Spec(str, "S3 secret access key (prefer the environment variable)"),
    "s3_session_token": _Spec(str, "S3 session token, for temporary credentials"),
    "fairness_label": _Spec(
        _label_key, "the Session label whose value is its fairness key (Runners are shared by key)"
    ),
    "fairness_weights": _Spec(
        _weights, "KEY=WEIGHT[,KEY=WEIGHT…]: shares of fairness keys (others weigh 1)"
    ),
    "priority_ratio": _Spec(
        _ratio, "dispatches a priority level gets for each one of the level below it"
    ),
    "strict_priority": _Spec(
        _bool, "true: a lower priority level waits while a higher one has queued tasks"
    ),
    "critical_path": _Spec(
        _bool, "true: a Session's ready nodes go longest remaining path first; false: DAG order"
    ),
}


def env_name(setting: str) -> str:
    return "HEAT_" + setting.upper()


def flag_name(setting: str) -> str:
    return "--" + setting.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = Settings()
    for name, spec in _SPECS.items():
        help_text = f"{spec.help} [env {env_name(name)}, default {getattr(defaults, name)!s}]"
        if spec.parse is _boolean:
            # ``--insecure`` alone means true; ``--insecure false`` is accepted too.
            parser.add_argument(
                flag_name(name), dest=name, default=None, nargs="?", const="true", help=help_text
            )
            continue
        parser.add_argument(
            flag_name(name), dest=name, default=None, metavar=name.upper(), help=help_text
        )


def load(
    flags: Mapping[str, Any] | argparse.Namespace, env: Mapping[str, str] | None = None
) -> Settings:
    """Settings from flags (highest), then the environment, then the defaults."""
    given = vars(flags) if isinstance(flags, argparse.Namespace) else dict(flags)
    environ = os.environ if env is None else env
    values: dict[str, Any] = {}
    for field in fields(Settings):
        spec = _SPECS[field.name]
        raw, source = given.get(field.name), flag_name(field.name)
        if raw is None:
            raw, source = environ.get(env_name(field.name)), env_name(field.name)
        if raw is None:
            continue
        try:
            values[field.name] = spec.parse(str(raw))
        except ValueError as exc:
            raise SettingsError(f"setting {field.name} ({source}): {str(raw)!r} {exc}") from None
    settings = Settings(**values)
    check(settings)
    return settings


def check(settings: Settings) -> None:
    """The rules between settings; SettingsError naming them."""
    if bool(settings.server_cert) != bool(settings.server_key):
        raise SettingsError(
            "settings server_cert (--server-cert / HEAT_SERVER_CERT) and server_key "
            "(--server-key / HEAT_SERVER_KEY) go together: give both, or neither for plaintext"
        )
    if settings.client_ca and not settings.server_cert:
        raise SettingsError(
            "setting client_ca (--client-ca / HEAT_CLIENT_CA) needs TLS: give "
            "server_cert and server_key too"
        )
    if bool(settings.runner_tls_cert) != bool(settings.runner_tls_key):
        raise SettingsError(
            "settings runner_tls_cert and runner_tls_key go together: give both, or neither"
        )
    if not settings.tls and not settings.insecure and not settings.loopback:
        raise SettingsError(
            f"setting listen (--listen / HEAT_LISTEN): {settings.listen} is not loopback, and "
            "plaintext there would show tokens and data to the network; give server_cert and "
            "server_key (--server-cert / --server-key), or --insecure (HEAT_INSECURE=true) to "
            "accept it (e.g. behind a mesh that encrypts)"
        )
    if settings.artifact_store.startswith("s3://") and not settings.s3_endpoint:
        raise SettingsError(
            "setting s3_endpoint (--s3-endpoint / HEAT_S3_ENDPOINT) is needed for"
            f" artifact_store {settings.artifact_store!r}: e.g. https://s3.eu-west-1.amazonaws.com"
        )
    if settings.heartbeat_interval * 2 > settings.lease_duration:
        raise SettingsError(
            f"setting heartbeat_interval ({settings.heartbeat_interval}s) must be at most half "
            f"of lease_duration ({settings.lease_duration}s), or leases expire between heartbeats"
        )
