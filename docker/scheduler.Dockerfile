# The scheduler's image. From the repository root:
#   docker build -f docker/scheduler.Dockerfile -t heat-scheduler:0.1.0 .
# Multi-stage: the build stage makes /opt/heat (a venv); the final stage is python slim with
# that venv, no compilers or pip caches, running as an unprivileged user.

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY docker/build-venv docker/
COPY gen/python/ gen/python/
COPY runtime_stub/ runtime_stub/
COPY pyproject.toml README.md ./
COPY scheduler/ scheduler/
RUN docker/build-venv /opt/heat scheduler

FROM python:3.11-slim-bookworm
ENV PATH=/opt/heat/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HEAT_LISTEN=0.0.0.0:50051 \
    HEAT_DATA_DIR=/tmp/heat-data
COPY --from=build /opt/heat /opt/heat
USER 10001:10001
EXPOSE 50051
ENTRYPOINT ["heat-scheduler"]
CMD ["serve"]
