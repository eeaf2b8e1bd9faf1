"""The container images, without a container engine (none runs on these machines).

hadolint lints each Dockerfile. Then each image's virtual environment is built the way its
Dockerfile builds it (``docker/build-venv``, in a plain venv outside the source tree) and its
entrypoint runs as the image would: the scheduler image's ``heat-scheduler serve``, and the
example runner's ``python /app/runner.py`` from the runner base image's venv, which the
scheduler starts for the work; the example Session then completes.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]
HADOLINT = Path(sys.executable).parent / "hadolint"
DOCKERFILES = [
    ROOT / "docker" / "scheduler.Dockerfile",
    ROOT / "docker" / "runner-base.Dockerfile",
    ROOT / "examples" / "csv_sum" / "Dockerfile",
]
# The ENV lines of the images, as far as a process here can have them.
IMAGE_ENV = {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}


def test_the_dockerfiles_pass_hadolint() -> None:
    result = subprocess.run(
        [str(HADOLINT), "--failure-threshold", "style", *map(str, DOCKERFILES)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_example_manifest_names_the_example_image() -> None:
    manifest = (ROOT / "examples" / "csv_sum" / "manifest.json").read_text()
    assert '"containerImage": "heat-csv-runner:0.1.0"' in manifest
    assert "heat-csv-runner:0.1.0" in (ROOT / "examples" / "csv_sum" / "Dockerfile").read_text()
    assert (
        "FROM heat-runner-base:0.1.0" in (ROOT / "examples" / "csv_sum" / "Dockerfile").read_text()
    )


def build_context(dockerfile: Path, into: Path) -> Path:
    """The build stage's files, copied as its COPY lines say (into a folder of their own, so
    that building leaves nothing in the source tree), and its WORKDIR."""
    workdir = into
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if not words or (words[0] == "FROM" and "AS" not in words):
            if words:
                break  # the final stage starts: the build stage is done
            continue
        if words[0] == "WORKDIR":
            workdir = into / words[1].lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif words[0] == "COPY" and not words[1].startswith("--from"):
            *sources, dest = words[1:]
            for source in sources:
                target = workdir / dest if not dest.startswith("/") else into / dest.lstrip("/")
                if (ROOT / source).is_dir():
                    shutil.copytree(
                        ROOT / source,
                        target,
                        dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"),
                    )
                else:
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(ROOT / source, target)
    return workdir


@pytest.fixture(scope="module")
def venvs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """/opt/heat of the scheduler image and of the runner base image, each built by its
    Dockerfile's own step (``RUN docker/build-venv /opt/heat …``) from its build context."""
    folder = tmp_path_factory.mktemp("images")
    made = {"scheduler": folder / "scheduler", "runtime": folder / "runtime"}
    sources = {
        "scheduler": ROOT / "docker" / "scheduler.Dockerfile",
        "runtime": ROOT / "docker" / "runner-base.Dockerfile",
    }

    async def build() -> None:
        processes = []
        for what, dest in made.items():
            assert f"RUN docker/build-venv /opt/heat {what}" in sources[what].read_text()
            workdir = build_context(sources[what], folder / f"{what}-context")
            processes.append(
                await asyncio.create_subprocess_exec(
                    str(workdir / "docker" / "build-venv"),
                    str(dest),
                    what,
                    cwd=workdir,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                )
            )
        for process in processes:
            out, _ = await process.communicate()
            assert process.returncode == 0, out.decode()

    asyncio.run(build())
    yield made
    shutil.rmtree(folder, ignore_errors=True)


def test_the_runtime_image_holds_the_runtime_and_not_the_scheduler(
    venvs: dict[str, Path], tmp_path: Path
) -> None:
    python = str(venvs["runtime"] / "bin" / "python")
    check = "import heat_runtime, heat.scheduler.v1.runner_service_pb2_grpc; import scheduler"
    result = subprocess.run(
        [python, "-c", check], capture_output=True, text=True, cwd=tmp_path, check=False,
        env={"PATH": "/usr/bin:/bin", **IMAGE_ENV},
    )  # fmt: skip
    assert "No module named 'scheduler'" in result.stderr, result.stderr


def test_the_entrypoints_run_the_example_session(
    venvs: dict[str, Path], db_dsn: str, tmp_path: Path
) -> None:
    app = tmp_path / "app"  # the example image's /app
    app.mkdir()
    shutil.copy(ROOT / "examples" / "csv_sum" / "runner.py", app / "runner.py")
    scheduler_bin = venvs["scheduler"] / "bin"
    address = f"127.0.0.1:{free_port()}"
    env = {
        "PATH": f"{scheduler_bin}:/usr/bin:/bin",
        **IMAGE_ENV,
        "HEAT_LISTEN": address,
        "HEAT_ADDRESS": address,
        "HEAT_DATABASE_URL": db_dsn,
        "HEAT_PROVISIONER": "local",
        # the example image's CMD, with the runner base image's Python
        "HEAT_LOCAL_RUNNERS": f"csv-runner={venvs['runtime']}/bin/python {app}/runner.py",
    }
    serve = subprocess.Popen(
        [str(scheduler_bin / "heat-scheduler"), "serve"],  # ENTRYPOINT + CMD
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:

        def cli(*args: str) -> str:
            result = subprocess.run(
                [str(scheduler_bin / "heat-scheduler"), *args],
                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
            assert result.returncode == 0, result.stdout + result.stderr
            return result.stdout

        manifest = ROOT / "examples" / "csv_sum" / "manifest.json"
        for _ in range(100):  # until it serves (the apply is retried on UNAVAILABLE)
            result = subprocess.run(
                [str(scheduler_bin / "heat-scheduler"), "apply", str(manifest)],
                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            if result.returncode == 0 or serve.poll() is not None:
                break
            time.sleep(0.2)
        assert result.returncode == 0, result.stderr
        name = cli("submit", "--template", "csv-totals").split()[0]
        cli("watch", name)
        shown = cli("show", name, "--json")
        assert '"SESSION_STATE_SUCCEEDED"' in shown or '"SUCCEEDED"' in shown, shown
        assert "451.25" in shown
    finally:
        serve.terminate()
        _, err = serve.communicate(timeout=60)
    assert serve.returncode == 0, err
    assert "created instance csv-runner-" in err
