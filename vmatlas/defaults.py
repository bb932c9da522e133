"""Defaults that the commands share with the parts they run (agent, uplink, server,
certificates).

Loading this module imports nothing, so that the command line can build its parser
and print ``--help`` without loading grpc, cryptography or the server; the parts take
their defaults from here rather than keeping copies.
"""

from __future__ import annotations

AGENT_LISTEN = "127.0.0.1:50551"
SERVER_LISTEN = "127.0.0.1:50550"
# The server's HTTP listener: /metrics and the web view.
HTTP_LISTEN = "127.0.0.1:50580"

# How long a stopping server or agent lets calls in flight finish.
GRACE_SECONDS = 10.0
HEARTBEAT_SECONDS = 10.0
# Heartbeats a second one server answers at most from all its agents together: past
# HEARTBEAT_BUDGET * HEARTBEAT_SECONDS agents it tells them a longer interval.
HEARTBEAT_BUDGET = 50.0
# An agent's transport keepalive: an HTTP/2 ping on its stream's connection after this
# much quiet, answered by gRPC itself (no Python on either side), and how long it waits
# for the answer before it drops the connection and reconnects.
# Longer than a default server's own pings (after 40 s), so that while the server is
# there its pings keep the agent's from being sent: one ping per agent, not two.
AGENT_KEEPALIVE_SECONDS = 60.0
AGENT_KEEPALIVE_TIMEOUT_SECONDS = 20.0
# Agent streams one server holds at once (an idle one costs a queue, not a thread).
MAX_AGENTS = 20_000

# An agent's pushes to the fleet server.
INTERVAL_SECONDS = 60.0
JUMP_REGIONS = 1000
# An hour of pushes at the default interval (jump pushes count too).
BUFFER_PUSHES = 60
# The Windows service's name (`vmatlas agent service install`).
SERVICE_NAME = "vmatlas-agent"

# Calls per second and burst each client of a server or agent is allowed.
RATE_PER_SECOND = 20.0
RATE_BURST = 40

# DNS names and addresses a server certificate names when none are given.
SERVER_NAMES = ("localhost", "127.0.0.1", "::1")


def data_dir() -> str:
    """Where the server keeps its database unless told otherwise."""
    import platformdirs

    return platformdirs.user_data_dir("vmatlas", appauthor=False)
