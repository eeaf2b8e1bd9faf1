"""A real Kubernetes control plane for the tests: etcd and kube-apiserver on 127.0.0.1.

``scripts/k8s-tools`` builds the binaries once (from the Go module proxy) into a cache folder;
:func:`running_cluster` starts them in a private folder with:

- a serving certificate for 127.0.0.1 signed by a CA the tests make, and a static bearer token
  for the tests' own identity (group ``system:masters``: the tests act as admin and as the node);
- RBAC authorization (no other mode), so a ServiceAccount gets exactly what its Roles grant;
- a service-account issuer whose signing keys the tests generate, so TokenRequest works and its
  tokens authenticate;
- the default admission plugins (PodSecurity among them), so a namespace labelled
  ``pod-security.kubernetes.io/enforce: restricted`` refuses pods that break that standard;
- an audit log of every request made by a ServiceAccount (who, verb, resource), to check that
  a Role holds nothing beyond what its user does.

No kube-scheduler or kubelet run: the tests bind pods and write their status themselves
(:mod:`tests.k8s.kubelet`), and a namespace is never deleted (each test takes a fresh one).
Of kube-controller-manager's controllers only the Job controller runs, and only for the tests
that ask for it (:func:`running_job_controller`: the chart's migration hook is a Job).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import json
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kubernetes_asyncio.client import Configuration

from tests.k8s.kube import JsonObj, Kube, KubeError

ROOT = Path(__file__).resolve().parents[2]
TOOLS_SCRIPT = ROOT / "scripts" / "k8s-tools"
ISSUER = "https://kubernetes.default.svc.cluster.local"
ADMIN = "heat-test-admin"
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  userGroups: ["system:serviceaccounts"]
- level: None
"""


def k8s_tools() -> Path:
    """The folder of kube-apiserver, kube-controller-manager, etcd and helm: built by
    scripts/k8s-tools when missing."""
    done = subprocess.run([str(TOOLS_SCRIPT)], check=True, stdout=subprocess.PIPE, text=True)
    return Path(done.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_pki(folder: Path) -> None:
    """ca.crt, the server's server.crt/.key for 127.0.0.1, and the service-account keys."""
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "heat-test-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.DNSName("localhost"),
                    x509.DNSName("kubernetes.default.svc"),
                ]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    (folder / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "server.crt").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    (folder / "server.key").write_bytes(_pem(key))
    sa_key = ec.generate_private_key(ec.SECP256R1())
    (folder / "sa.key").write_bytes(_pem(sa_key))
    (folder / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


@dataclass
class Cluster:
    url: str
    ca_file: Path
    admin_token: str
    folder: Path
    tools: Path
    audit_log: Path
    _made: set[str] = field(default_factory=set)

    def kube(self, token: str | None = None) -> Kube:
        return Kube(self.url, token or self.admin_token, self.ca_file)

    def configuration(self, token: str | None = None) -> Configuration:
        """A kubernetes-asyncio configuration for this server, as ``token``'s user (admin)."""
        config = Configuration(host=self.url)
        config.ssl_ca_cert = str(self.ca_file)
        config.api_key = {"BearerToken": f"Bearer {token or self.admin_token}"}
        return config

    def kubeconfig(self, path: Path, *, namespace: str, token: str | None = None) -> Path:
        """A kubeconfig file (for helm, or the scheduler's ``--kubeconfig``)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "test", "cluster": {"server": self.url,
                                             "certificate-authority": str(self.ca_file)}}
            ],
            "users": [{"name": "user", "user": {"token": token or self.admin_token}}],
            "contexts": [
                {"name": "test", "context": {"cluster": "test", "user": "user",
                                             "namespace": namespace}}
            ],
            "current-context": "test",
        }  # fmt: skip
        path.write_text(json.dumps(config))
        path.chmod(0o600)
        return path

    async def namespace(self, prefix: str = "heat", *, restricted: bool = True) -> str:
        """A fresh namespace with its ``default`` ServiceAccount (no controller makes it);
        with ``restricted``, PodSecurity admission enforces the restricted standard there."""
        labels = {}
        if restricted:
            labels = {
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": "latest",
            }
        async with self.kube() as kube:
            while True:
                name = f"{prefix}-{secrets.token_hex(3)}"
                if name in self._made:
                    continue
                self._made.add(name)
                body = {"metadata": {"name": name, "labels": labels}}
                await kube.post("/api/v1/namespaces", body)
                sa = {"metadata": {"name": "default"}}
                await kube.post(f"/api/v1/namespaces/{name}/serviceaccounts", sa)
                return name

    async def token(self, namespace: str, service_account: str, seconds: int = 3600) -> str:
        """A token of the ServiceAccount, from the API's TokenRequest."""
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"audiences": [ISSUER], "expirationSeconds": seconds},
        }
        async with self.kube() as kube:
            url = f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token"
            answer = await kube.post(url, body)
        return str(answer["status"]["token"])

    def audit(self, user: str) -> list[JsonObj]:
        """The audit events of one user so far (ServiceAccounts only are logged)."""
        events = []
        with contextlib.suppress(FileNotFoundError), self.audit_log.open() as lines:
            for line in lines:
                event = json.loads(line)
                if event.get("user", {}).get("username") == user:
                    events.append(event)
        return events


async def _wait_until_up(
    name: str, process: subprocess.Popen[bytes], log: Path, check: Any, timeout: float = 90
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited ({process.returncode}):\n{_tail(log)}")
        with contextlib.suppress(aiohttp.ClientError, OSError, KubeError, TimeoutError):
            if await check():
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not come up within {timeout}s:\n{_tail(log)}")
        await asyncio.sleep(0.2)


def _tail(log: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    return ""


def _spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@asynccontextmanager
async def running_cluster(folder: Path, tools: Path) -> AsyncIterator[Cluster]:
    """etcd and kube-apiserver in ``folder``, stopped when the block ends."""
    pki = folder / "pki"
    write_pki(pki)
    token = secrets.token_urlsafe(24)
    (folder / "tokens.csv").write_text(f'{token},{ADMIN},{ADMIN},"system:masters"\n')
    (folder / "audit-policy.yaml").write_text(AUDIT_POLICY)
    client, peer, secure = free_port(), free_port(), free_port()
    etcd_url = f"http://127.0.0.1:{client}"
    with contextlib.ExitStack() as stack:
        etcd_log = folder / "etcd.log"
        etcd = _spawn(
            [
                str(tools / "etcd"),
                "--name=test",
                f"--data-dir={folder / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=test=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync",  # a throwaway cluster: speed over durability
                "--log-level=warn",
            ],
            etcd_log,
        )
        stack.callback(_stop, etcd)

        async def etcd_healthy() -> bool:
            async with aiohttp.ClientSession() as http, http.get(f"{etcd_url}/health") as r:
                return r.status == 200

        await _wait_until_up("etcd", etcd, etcd_log, etcd_healthy)

        api_log = folder / "kube-apiserver.log"
        audit_log = folder / "audit.log"
        apiserver = _spawn(
            [
                str(tools / "kube-apiserver"),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={secure}",
                f"--tls-cert-file={pki / 'server.crt'}",
                f"--tls-private-key-file={pki / 'server.key'}",
                f"--token-auth-file={folder / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                f"--service-account-issuer={ISSUER}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--api-audiences={ISSUER}",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--endpoint-reconciler-type=none",  # no Endpoints for a loopback address
                f"--audit-policy-file={folder / 'audit-policy.yaml'}",
                f"--audit-log-path={audit_log}",
                "--audit-log-mode=blocking",
                "--profiling=false",
                f"--cert-dir={folder / 'certs'}",
                "--v=1",
            ],
            api_log,
        )
        stack.callback(_stop, apiserver)
        cluster = Cluster(
            url=f"https://127.0.0.1:{secure}",
            ca_file=pki / "ca.crt",
            admin_token=token,
            folder=folder,
            tools=tools,
            audit_log=audit_log,
        )

        async def ready() -> bool:
            async with cluster.kube() as kube:
                await kube.request("GET", "/readyz", timeout=5)
                return True

        await _wait_until_up("kube-apiserver", apiserver, api_log, ready)
        yield cluster


@asynccontextmanager
async def running_job_controller(cluster: Cluster) -> AsyncIterator[None]:
    """kube-controller-manager with the Job controller alone (no leader election, no port of its
    own), acting as the tests' admin; stopped when the block ends. It makes a Job's pods and
    records their ends in the Job's status, as in a real cluster."""
    folder = cluster.folder / f"kcm-{secrets.token_hex(3)}"
    folder.mkdir()
    log = folder / "kube-controller-manager.log"
    process = _spawn(
        [
            str(cluster.tools / "kube-controller-manager"),
            f"--kubeconfig={cluster.kubeconfig(folder / 'kubeconfig', namespace='default')}",
            "--controllers=job-controller",
            "--leader-elect=false",
            "--secure-port=0",
            "--v=2",
        ],
        log,
    )
    try:

        async def started() -> bool:  # its informers have listed Jobs and pods
            text = log.read_text(errors="replace")
            return "Starting job controller" in text and "Caches are synced" in text

        await _wait_until_up("kube-controller-manager", process, log, started)
        yield
    finally:
        _stop(process)
