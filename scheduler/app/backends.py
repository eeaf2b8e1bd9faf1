"""What the settings name outside the process: the artefact store (a folder or S3) and the
provisioner (local processes or Kubernetes pods), checked before the scheduler serves."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from scheduler.artifacts.filesystem import FileBlobStore
from scheduler.artifacts.s3 import S3BlobStore, S3Client, S3Config
from scheduler.artifacts.sources import Sources
from scheduler.domain.artifacts import parse_allowed
from scheduler.domain.errors import SchedulerError
from scheduler.domain.ports import BlobStore, Provisioner
from scheduler.domain.provisioning import InstanceSpec
from scheduler.domain.registry import Runner
from scheduler.provisioner.errors import ProvisionerError
from scheduler.provisioner.local import LocalProvisioner
from scheduler.service.artifacts import ArtifactSettings
from scheduler.settings import Settings, SettingsError, parse_commands

if TYPE_CHECKING:
    from scheduler.provisioner.kubernetes import KubernetesProvisioner

log = logging.getLogger("scheduler")


def instance_environment(settings: Settings) -> tuple[tuple[str, str], ...]:
    """The TLS variables runner instances get: files on this machine for local processes;
    for pods the CA's content (its path means nothing there; a pod's own client certificate
    comes from its pod template)."""
    env: list[tuple[str, str]] = []
    if settings.runner_tls_ca:
        if settings.provisioner == "kubernetes":
            env.append(("HEAT_TLS_CA", Path(settings.runner_tls_ca).read_text()))
        else:
            env.append(("HEAT_TLS_CA", str(Path(settings.runner_tls_ca).resolve())))
    if settings.runner_tls_cert and settings.provisioner != "kubernetes":
        env.append(("HEAT_TLS_CERT", str(Path(settings.runner_tls_cert).resolve())))
        env.append(("HEAT_TLS_KEY", str(Path(settings.runner_tls_key).resolve())))
    return tuple(env)


async def artifact_store(
    settings: Settings, stack: AsyncExitStack
) -> tuple[ArtifactSettings, BlobStore, Sources]:
    """The artefact store the settings name (closed with ``stack``), and the URI reader."""
    try:
        allowed = parse_allowed(settings.artifact_sources)
    except ValueError as error:
        raise SettingsError(
            f"setting artifact_sources (--artifact-sources / HEAT_ARTIFACT_SOURCES): {error}"
        ) from None
    s3 = None
    if settings.s3_endpoint:
        config = s3_config(settings, settings.artifact_store)
        s3 = S3Client.create(config)
        stack.push_async_callback(s3.close)
    blobs: BlobStore
    try:
        if settings.artifact_store.startswith("s3://"):
            blobs = await S3BlobStore.open(s3_config(settings, settings.artifact_store))
        else:
            folder = settings.artifact_store.removeprefix("file://")
            path = Path(folder) if folder else settings.data_dir / "artifacts"
            blobs = await FileBlobStore.open(path.resolve())
    except SchedulerError as error:
        raise SettingsError(
            f"setting artifact_store (--artifact-store / HEAT_ARTIFACT_STORE): {error}"
        ) from None
    stack.push_async_callback(blobs.close)
    retention = settings.artifact_retention
    log.info("artefact store", extra={"store": blobs.description})
    return (
        ArtifactSettings(
            retention=None if retention is None else timedelta(seconds=retention),
            sources=allowed,
        ),
        blobs,
        Sources(allowed, s3),
    )


def s3_config(settings: Settings, store: str) -> S3Config:
    bucket, _, prefix = store.removeprefix("s3://").partition("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return S3Config(
        endpoint=settings.s3_endpoint,
        bucket=bucket,
        prefix=prefix,
        region=settings.s3_region,
        access_key_id=settings.s3_access_key_id,
        secret_access_key=settings.s3_secret_access_key,
        session_token=settings.s3_session_token,
    )


def advertised(host: str, port: int) -> str:
    """The address instances on this machine dial when we listen on every interface."""
    if host in ("0.0.0.0", "[::]", ""):  # noqa: S104 (compared, not bound)
        host = "127.0.0.1"
    return f"{host}:{port}"


async def make_provisioner(settings: Settings) -> Provisioner:
    if settings.provisioner == "kubernetes":
        from scheduler.provisioner._k8s_template import TemplateError, load_pod_template
        from scheduler.provisioner.kubernetes import KubernetesProvisioner

        template = None
        if settings.k8s_pod_template:
            try:
                template = load_pod_template(Path(settings.k8s_pod_template))
            except TemplateError as exc:
                raise SettingsError(
                    "setting k8s_pod_template (--k8s-pod-template / HEAT_K8S_POD_TEMPLATE): "
                    f"{settings.k8s_pod_template}: {exc}"
                ) from None
        provisioner = await KubernetesProvisioner.connect(
            kubeconfig=settings.kubeconfig or None,
            context=settings.k8s_context or None,
            namespace=settings.k8s_namespace or None,
            scheduler_name=settings.scheduler_name,
            pod_template=template,
        )
        if template:
            try:
                await check_pod_template(provisioner, settings)
            except BaseException:
                await provisioner.close()
                raise
        return provisioner
    return LocalProvisioner(
        parse_commands(settings.local_runners),
        state_dir=settings.data_dir.resolve() / "local-instances" / settings.scheduler_name,
        inherit=[n.strip() for n in settings.local_runner_env.split(",") if n.strip()],
        max_processes=settings.local_max_processes,
    )


async def check_pod_template(provisioner: KubernetesProvisioner, settings: Settings) -> None:
    """Refuse to start when the API will not admit a pod built from the template (its types,
    values, the namespace's Pod Security admission, our permission to create pods); a server
    that does not answer is only logged: the provisioner retries on its own."""
    probe = Runner(
        name="template-check",
        container_image="registry.invalid/heat/template-check:0",
        cpu_limit="100m",
        memory_limit="64Mi",
    )
    spec = InstanceSpec(
        probe, settings.advertise_address or settings.listen, settings.scheduler_name
    )
    try:
        await provisioner.check_template(spec)
    except ProvisionerError as exc:
        if exc.status is not None and 400 <= exc.status < 500 and exc.status not in (408, 429):
            raise SettingsError(
                "setting k8s_pod_template (--k8s-pod-template / HEAT_K8S_POD_TEMPLATE): "
                f"{settings.k8s_pod_template}: the Kubernetes API refuses its pods: {exc}"
            ) from None
        log.warning("could not check the runner pod template with the API: %s", exc)
