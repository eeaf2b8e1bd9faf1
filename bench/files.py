"""A large file through the scheduler: how much of it the scheduler's memory ever holds.

    .venv/bin/python bench/files.py            # 100 MiB
    .venv/bin/python bench/files.py --mib 500

Starts ``heat-scheduler serve`` (embedded PostgreSQL in a fresh folder, the folder artefact
store, no provisioner) and a runner in this process, then: uploads a file of random bytes in
1 MiB chunks (UploadArtifact); runs a Session whose node ``copy`` gets it as its input ``file``
(ReadArtifact: a spooled temporary file in the runner) and returns it (WriteArtifact), and
whose node ``digest`` reads that copy and returns its SHA-256; downloads the copy
(DownloadArtifact). So the file crosses the scheduler five times.

The scheduler's resident memory is read from /proc: VmRSS sampled every 20 ms, and VmHWM (the
kernel's own peak) before and after. It prints the figures; it asserts nothing but that the
digests agree (a benchmark, not a test).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from heat.scheduler.v1 import artifact_pb2 as apb
from heat.scheduler.v1 import artifact_service_pb2 as aspb
from heat.scheduler.v1 import artifact_service_pb2_grpc as aspb_grpc
from heat.scheduler.v1 import registry_service_pb2 as rpb
from heat.scheduler.v1 import registry_service_pb2_grpc as rpb_grpc
from heat.scheduler.v1 import session_pb2
from heat.scheduler.v1 import session_service_pb2 as spb
from heat.scheduler.v1 import session_service_pb2_grpc as spb_grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from heat_runtime import BaseProcessor, HeatRuntime, RuntimeConfig, current_task  # noqa: E402
from heat_runtime._values import to_python  # noqa: E402

from tests.support import authorized_sync_channel, open_tmp_dir, serve  # noqa: E402

CHUNK = 1024 * 1024
MANIFEST = {
    "runners": [{"name": "files", "containerImage": "none", "cpuLimit": "1", "memoryLimit": "1Gi"}],
    "nodeTemplates": [
        {"name": "copy", "runner": "files"},
        {"name": "digest", "runner": "files"},
    ],
}


class Copy(BaseProcessor):
    TEMPLATE_NAME = "copy"

    def process(self, inputs: dict[str, Any], config: dict[str, Any]) -> Any:
        return {"file": inputs["file"]}  # a spooled file: written back in chunks


class Digest(BaseProcessor):
    TEMPLATE_NAME = "digest"

    def process(self, inputs: dict[str, Any], config: dict[str, Any]) -> Any:
        raw = inputs["copy"]["file"]  # bytes up to HEAT_INLINE_FILE_BYTES, else a file
        file = io.BytesIO(raw) if isinstance(raw, bytes) else raw
        digest, size = hashlib.sha256(), 0
        while chunk := file.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
        return {"sha256": digest.hexdigest(), "bytes": size, "node": current_task().node_key}


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


class Sampler:
    """The largest VmRSS of a process, looked at every 20 ms on a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = status_kib(pid, "VmRSS")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, status_kib(self.pid, "VmRSS"))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def write_random(path: Path, mib: int) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as file:
        for _ in range(mib):
            chunk = os.urandom(CHUNK)
            digest.update(chunk)
            file.write(chunk)
    return digest.hexdigest()


def upload(channel: grpc.Channel, path: Path) -> apb.Artifact:
    def parts() -> Iterator[aspb.UploadArtifactRequest]:
        yield aspb.UploadArtifactRequest(upload=aspb.ArtifactUpload(filename=path.name))
        with path.open("rb") as file:
            while chunk := file.read(CHUNK):
                yield aspb.UploadArtifactRequest(data=chunk)

    artifact: apb.Artifact = aspb_grpc.ArtifactServiceStub(channel).UploadArtifact(parts()).artifact
    return artifact


def download_digest(channel: grpc.Channel, name: str) -> str:
    digest = hashlib.sha256()
    stream = aspb_grpc.ArtifactServiceStub(channel).DownloadArtifact(
        aspb.DownloadArtifactRequest(name=name)
    )
    for message in stream:
        digest.update(message.data)
    return digest.hexdigest()


@contextlib.contextmanager
def runner(address: str, secret: str) -> Iterator[None]:
    """The two processors served on a thread for the block, drained after it."""
    runtime = HeatRuntime(RuntimeConfig(address=address, runner="files", credential=secret))
    runtime.register(Copy)
    runtime.register(Digest)
    loops: list[asyncio.AbstractEventLoop] = []
    ready = threading.Event()

    async def serve() -> int:
        loops.append(asyncio.get_running_loop())
        ready.set()
        return await runtime.serve(handle_signals=False)

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    ready.wait()
    try:
        yield
    finally:
        loops[0].call_soon_threadsafe(runtime.drain, "done")
        thread.join(60)


def ended(channel: grpc.Channel, name: str) -> spb.GetSessionResponse:
    stub = spb_grpc.SessionServiceStub(channel)
    for event in stub.WatchSession(spb.WatchSessionRequest(name=name), timeout=600):
        if event.WhichOneof("event") == "session_change" and event.session_change.state >= 3:
            break  # SUCCEEDED, FAILED or CANCELLED
    response: spb.GetSessionResponse = stub.GetSession(spb.GetSessionRequest(name=name))
    return response


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=100, help="size of the file (default 100)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    work = open_tmp_dir("heat-bench-files-")
    served = serve(
        "--data-dir", str(work / "data"),
        "--provisioner", "none",
        "--max-artifact-bytes", str((args.mib + 1) * CHUNK),
        env={"HEAT_ARTIFACT_STORE": str(work / "artifacts")},
    )  # fmt: skip
    try:
        return run(served.address, served.process.pid, work, args)
    finally:
        served.stop()
        shutil.rmtree(work, ignore_errors=True)


def run(address: str, pid: int, work: Path, args: argparse.Namespace) -> int:
    source = work / "input.bin"
    expected = write_random(source, args.mib)
    with authorized_sync_channel(address) as channel:
        registry = rpb_grpc.RegistryServiceStub(channel)
        registry.ApplyManifest(
            json_format.ParseDict({"manifest": MANIFEST}, rpb.ApplyManifestRequest())
        )
        secret = registry.IssueRunnerCredential(
            rpb.IssueRunnerCredentialRequest(runner="files")
        ).credential.secret
        baseline_rss = status_kib(pid, "VmRSS")
        baseline_hwm = status_kib(pid, "VmHWM")
        sampler = Sampler(pid)
        started = time.monotonic()
        uploaded = upload(channel, source)
        uploaded_at = time.monotonic()
        request = json_format.ParseDict(
            {
                "dag": {
                    "nodes": [
                        {"key": "copy", "nodeTemplate": "copy"},
                        {"key": "digest", "nodeTemplate": "digest", "dependsOn": ["copy"]},
                    ]
                }
            },
            spb.CreateSessionRequest(),
        )
        request.files.append(apb.FileInput(input="file", artifact=uploaded.name))
        with runner(address, secret):
            name = spb_grpc.SessionServiceStub(channel).CreateSession(request).session.name
            session = ended(channel, name).session
        ran_at = time.monotonic()
        outputs = {n.key: to_python(n.outputs) for n in session.nodes}
        copy_name = outputs["copy"]["file"]["$artifact"]
        downloaded = download_digest(channel, copy_name)
        finished = time.monotonic()
        peak_rss = sampler.stop()
        peak_hwm = status_kib(pid, "VmHWM")
    figures = {
        "file_mib": args.mib,
        "state": session_pb2.SessionState.Name(session.state),
        "digests_agree": outputs["digest"]["sha256"] == expected == downloaded,
        "scheduler_rss_before_mib": round(baseline_rss / 1024, 1),
        "scheduler_rss_peak_mib": round(peak_rss / 1024, 1),
        "scheduler_rss_growth_mib": round((peak_rss - baseline_rss) / 1024, 1),
        "scheduler_vmhwm_before_mib": round(baseline_hwm / 1024, 1),
        "scheduler_vmhwm_after_mib": round(peak_hwm / 1024, 1),
        "upload_s": round(uploaded_at - started, 2),
        "session_s": round(ran_at - uploaded_at, 2),
        "download_s": round(finished - ran_at, 2),
        "scheduler_crossings_mib": 5 * args.mib,
    }
    if args.json:
        print(json.dumps(figures))
    else:
        width = max(map(len, figures))
        for key, value in figures.items():
            print(f"{key:<{width}}  {value}")
    return 0 if figures["digests_agree"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
