"""A process's container, from its cgroup path (``/proc/PID/cgroup``).

Container runtimes name a container's cgroup after its 64-hex-digit id, with their own
prefix and suffix; the kubelet puts each pod's containers under a ``pod<UID>`` cgroup
(``_`` for ``-`` with the systemd driver)::

    0::/system.slice/docker-<id>.scope                       Docker (systemd driver)
    0::/docker/<id>                                          Docker (cgroupfs driver)
    0::/machine.slice/libpod-<id>.scope                      Podman
    0::/kubepods.slice/kubepods-burstable.slice/
        kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope
    12:memory:/kubepods/besteffort/pod<uid>/<id>             cgroup v1, cgroupfs driver

The last component that holds such an id wins (a container nested in another is
named by the inner one). Anything else, including ids shorter than 64 digits, names no
container.
"""

from __future__ import annotations

import re

_CONTAINER = re.compile(
    r"^(?:docker-|cri-containerd-|crio-|libpod-|containerd-|conmon-)?([0-9a-f]{64})(?:\.scope)?$"
)
_POD = re.compile(
    r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})(?:\.slice)?$"
)


def container_of(cgroup_text: str) -> tuple[str, str]:
    """``(container_id, pod_uid)`` from the text of ``/proc/PID/cgroup``; empty strings
    where there is none. The unified (v2) line is preferred; v1 lines are read when it
    names nothing (hybrid hosts)."""
    lines = cgroup_text.splitlines()
    ordered = [line for line in lines if line.startswith("0::")]
    ordered += [line for line in lines if not line.startswith("0::")]
    for line in ordered:
        path = line.split(":", 2)[-1]
        container, pod = "", ""
        for part in path.split("/"):
            match = _CONTAINER.match(part)
            if match:
                container = match.group(1)
            match = _POD.search(part)
            if match:
                pod = match.group(1).replace("_", "-")
        if container or pod:
            return container, pod
    return "", ""
