"""Who may call what: the access policy of each vmatlas server, by full method name.

A method missing here is refused (the interceptor fails closed). Address-bearing
methods need ``inspector``; summaries, audits and diffs by identity are open to
``viewer``; the agent uplink is for agent certificates only.
"""

from __future__ import annotations

from collections.abc import Iterable

from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from vmatlas.security.auth import AGENTS_ONLY, INSPECTOR, REPLICAS_ONLY, VIEWER, Policy, Rule
from vmatlas.v1 import agent_pb2, fleet_pb2, hub_pb2, replica_pb2


def method_names(file_descriptor: object, service: str) -> list[str]:
    """Full method names (``/package.Service/Method``) of one service."""
    descriptor = file_descriptor.services_by_name[service]  # type: ignore[attr-defined]
    return [f"/{descriptor.full_name}/{m.name}" for m in descriptor.methods]


def rules(service_methods: Iterable[str], rule: Rule) -> dict[str, Rule]:
    return dict.fromkeys(service_methods, rule)


_AGENT = agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name
_FLEET = fleet_pb2.DESCRIPTOR.services_by_name["FleetService"].full_name
_HUB = hub_pb2.DESCRIPTOR.services_by_name["AgentHubService"].full_name
_REPLICA = replica_pb2.DESCRIPTOR.services_by_name["ReplicaService"].full_name

# Health and reflection reveal nothing about a host, but still need a token.
STANDARD_POLICY: dict[str, Rule] = {
    **rules(method_names(health_pb2.DESCRIPTOR, "Health"), VIEWER),
    **rules(method_names(reflection_pb2.DESCRIPTOR, "ServerReflection"), VIEWER),
}

AGENT_POLICY: Policy = {
    **STANDARD_POLICY,
    f"/{_AGENT}/GetHost": VIEWER,
    f"/{_AGENT}/ListProcesses": VIEWER,
    f"/{_AGENT}/WatchProcess": VIEWER,
    # A full snapshot is the layout itself.
    f"/{_AGENT}/GetSnapshot": INSPECTOR,
}

# `vmatlas server` (and `vmatlas up`, which serves the local agent's service beside it).
SERVER_POLICY: Policy = {
    **AGENT_POLICY,
    f"/{_FLEET}/ListHosts": VIEWER,
    f"/{_FLEET}/ListFleetProcesses": VIEWER,
    f"/{_FLEET}/ListProcessHistory": VIEWER,
    # Serialized snapshots, layouts included.
    f"/{_FLEET}/GetHostSnapshot": INSPECTOR,
    f"/{_FLEET}/GetStoredSnapshot": INSPECTOR,
    # The agents' uplink: their certificate names the host they may register.
    f"/{_HUB}/Connect": AGENTS_ONLY,
    # The link between servers on one store: their replica certificates. The
    # forwarding server checked its caller's role and strips addresses for viewers.
    f"/{_REPLICA}/TakeHostSnapshot": REPLICAS_ONLY,
    # A replica that claimed a host tells the one it took it from.
    f"/{_REPLICA}/FenceHost": REPLICAS_ONLY,
    # Audits and diffs: a viewer's diff reaches it with its change addresses stripped
    # (vmatlas.security.redact), leaving the by-identity classes.
    "/vmatlas.v1.AnalysisService/Diff": VIEWER,
    "/vmatlas.v1.AnalysisService/Audit": VIEWER,
}


def uncovered(policy: Policy, file_descriptor: object, service: str) -> list[str]:
    """Methods of ``service`` that ``policy`` forgets (they would be refused)."""
    return [m for m in method_names(file_descriptor, service) if m not in policy]
