"""Many idle runner instances in one process, on the generated stubs directly.

``python -m bench.idle_streams ADDRESS SECRET FIRST COUNT``: instances ``idle-FIRST`` ..
``idle-(FIRST+COUNT-1)``, each with its own ClaimTask stream (ClaimStart, 1 credit, then
silence) and Heartbeat stream (an empty heartbeat every interval the scheduler states, the
first one at a random point of the first interval, as instances started at different times
would). Up to 50 instances share one HTTP/2 connection. Prints ``ready <heartbeat interval>``
once every instance has had a heartbeat answered, then runs until SIGTERM; then prints
``errors N``, the number of streams that failed.
"""

from __future__ import annotations

import asyncio
import random
import signal
import sys
from typing import Final

import grpc
import grpc.aio
from heat.scheduler.v1 import runner_service_pb2 as pb
from heat.scheduler.v1 import runner_service_pb2_grpc as pb_grpc

PER_CHANNEL: Final = 50
FIRST_INTERVAL: Final = 10.0


class Instance:
    def __init__(self, stub: pb_grpc.RunnerServiceAsyncStub, secret: str, instance_id: str) -> None:
        self.stub = stub
        self.metadata = (("authorization", f"Bearer {secret}"),)
        self.instance_id = instance_id
        self.answered = asyncio.Event()
        self.interval = FIRST_INTERVAL

    async def claim(self) -> None:
        call = self.stub.ClaimTask(metadata=self.metadata)
        await call.write(
            pb.ClaimTaskRequest(
                start=pb.ClaimStart(runner="bench", instance_id=self.instance_id, credits=1)
            )
        )
        while True:
            message = await call.read()
            if message is grpc.aio.EOF:
                raise RuntimeError(f"{self.instance_id}: the ClaimTask stream ended")

    async def heartbeat(self, rng: random.Random) -> None:
        call = self.stub.Heartbeat(metadata=self.metadata)
        request = pb.HeartbeatRequest(instance_id=self.instance_id)
        await call.write(request)
        first = await call.read()
        if not isinstance(first, pb.HeartbeatResponse):
            raise RuntimeError(f"{self.instance_id}: the Heartbeat stream ended")
        self.interval = first.heartbeat_interval.ToTimedelta().total_seconds() or FIRST_INTERVAL
        self.answered.set()
        await asyncio.sleep(rng.uniform(0, self.interval))
        while True:
            await call.write(request)
            reply = await call.read()
            if not isinstance(reply, pb.HeartbeatResponse):
                raise RuntimeError(f"{self.instance_id}: the Heartbeat stream ended")
            seconds = reply.heartbeat_interval.ToTimedelta().total_seconds()
            self.interval = seconds or self.interval
            await asyncio.sleep(self.interval)


async def main(address: str, secret: str, first: int, count: int) -> int:
    rng = random.Random(first)  # noqa: S311 (jitter)
    channels: list[grpc.aio.Channel] = []
    instances: list[Instance] = []
    for i in range(count):
        if i % PER_CHANNEL == 0:
            # A local subchannel pool: each channel gets its own connection.
            channels.append(
                grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
            )
        stub = pb_grpc.RunnerServiceStub(channels[-1])
        instances.append(Instance(stub, secret, f"idle-{first + i}"))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    tasks: list[asyncio.Task[None]] = []
    for instance in instances:
        tasks.append(asyncio.create_task(instance.claim()))
        tasks.append(asyncio.create_task(instance.heartbeat(rng)))
    await asyncio.gather(*(i.answered.wait() for i in instances))
    print(f"ready {instances[0].interval if instances else 0.0}", flush=True)
    await stop.wait()
    errors = sum(1 for t in tasks if t.done() and t.exception() is not None)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for channel in channels:
        await channel.close()
    print(f"errors {errors}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
