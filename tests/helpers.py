"""Helpers shared by the test suites."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from scheduler import app

if TYPE_CHECKING:
    from heat.scheduler.v1.registry_service_pb2_grpc import RegistryServiceAsyncStub


@dataclass
class Scheduler:
    address: str
    channel: grpc.aio.Channel
    registry: RegistryServiceAsyncStub
    running: app.Running


@dataclass
class RpcFailure:
    code: grpc.StatusCode
    message: str
    violations: dict[str, str]
    reason: str
    metadata: dict[str, str]


def failure(error: grpc.aio.AioRpcError) -> RpcFailure:
    """The status of a failed call with its rich details unpacked."""
    violations: dict[str, str] = {}
    reason = ""
    metadata: dict[str, str] = {}
    status: Any = rpc_status.from_call(error)
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.update({v.field: v.description for v in bad.field_violations})
        elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
            metadata = dict(info.metadata)
    return RpcFailure(error.code(), error.details() or "", violations, reason, metadata)
