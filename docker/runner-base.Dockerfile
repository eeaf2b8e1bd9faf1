# The base image of HEAT runners: Python with heat-runtime installed. From the repository root:
#   docker build -f docker/runner-base.Dockerfile -t heat-runner-base:0.1.0 .
# A runner's own Dockerfile is two lines on top (see examples/csv_sum/Dockerfile):
#   FROM heat-runner-base:0.1.0
#   COPY runner.py /app/runner.py
# It runs as user 10001 (numeric, so Kubernetes can check runAsNonRoot) with a read-only root
# filesystem in mind: scratch space is /tmp, an emptyDir in the scheduler's pods.

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY docker/build-venv docker/
COPY gen/python/ gen/python/
COPY runtime_stub/ runtime_stub/
RUN docker/build-venv /opt/heat runtime

FROM python:3.11-slim-bookworm
ENV PATH=/opt/heat/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
COPY --from=build /opt/heat /opt/heat
WORKDIR /app
USER 10001:10001
CMD ["python", "/app/runner.py"]
