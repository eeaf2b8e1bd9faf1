"""The runner protocol: claims pushed to instances, heartbeats and leases, results, the
timekeeper, and who may do what. ``RunnerProtocol`` is the door; the parts behind it:

- ``authorisation``  credential -> Runner, instance and attempt ownership
- ``dispatch``       connected instances, per-Runner dispatchers, credits, idle drain
- ``leases``         heartbeats, lease extension, cancellation and drain pushes
- ``results``        group-commit settlement of outcomes, conflict retry
- ``timekeeper``     expiries and retry promotion, on the leading replica
"""

from __future__ import annotations

from scheduler.service.runner_protocol.dispatch import Instance
from scheduler.service.runner_protocol.protocol import RunnerProtocol
from scheduler.service.runner_protocol.settings import ProtocolSettings

__all__ = ["Instance", "ProtocolSettings", "RunnerProtocol"]
