"""The heat-scheduler service."""

import os

# gRPC's core registers fork handlers that, in a child forked while other threads use gRPC,
# restart its poller there; a child that is about to exec (PostgreSQL's programs run as
# another user, runner processes) can crash in it (SIGSEGV, "epoll_wait error: Bad file
# descriptor"). Nothing here forks to go on running gRPC, so the handlers are left out. It must
# be set before grpc is first imported; a value given in the environment wins.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
