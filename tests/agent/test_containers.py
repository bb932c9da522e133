"""Containers from cgroups: the parser on the paths each runtime makes, and the reader,
``ps``, the audit and the metrics on planted processes moved into cgroups this test
makes (cgroup v2, as root) with container-like and kubepods-like names."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Planter
from vmatlas.agents.cgroup import container_of
from vmatlas.agents.linux import LinuxReader
from vmatlas.fleet import FleetProcess, HostStatus
from vmatlas.metrics import MetricsSettings, fleet_families

ID = "4f3c2b1a" * 8
POD = "6a1e2f3d-1b2c-4d5e-8f90-a1b2c3d4e5f6"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"0::/system.slice/docker-{ID}.scope\n", (ID, "")),
        (f"0::/docker/{ID}\n", (ID, "")),
        (f"0::/machine.slice/libpod-{ID}.scope/container\n", (ID, "")),
        (
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
            f"{POD.replace('-', '_')}.slice/cri-containerd-{ID}.scope\n",
            (ID, POD),
        ),
        (
            f"0::/kubepods.slice/kubepods-pod{POD.replace('-', '_')}.slice/crio-{ID}.scope\n",
            (ID, POD),
        ),
        (f"12:memory:/kubepods/besteffort/pod{POD}/{ID}\n0::/\n", (ID, POD)),
        # A sandbox's own cgroup with a shorter id, and no cgroup at all: no container.
        ("4:memory:/process_api/832c7e7a30fb7f3ef4db0422a7ecca7f\n0::/\n", ("", "")),
        ("0::/user.slice/user-1000.slice/session-2.scope\n", ("", "")),
        ("", ("", "")),
    ],
)
def test_container_and_pod_from_cgroup_paths(text: str, expected: tuple[str, str]) -> None:
    assert container_of(text) == expected


def test_planted_processes_in_containers_and_pods(
    cgroups: Callable[[str, int], None], make_planter: Callable[[], Planter]
) -> None:
    docker_id, pod_container = secrets.token_hex(32), secrets.token_hex(32)
    pod_uid = str(uuid.uuid4())
    plain, boxed, podded = make_planter(), make_planter(), make_planter()
    cgroups(f"system.slice/docker-{docker_id}.scope", boxed.pid)
    cgroups(
        "kubepods.slice/kubepods-burstable.slice/"
        f"kubepods-burstable-pod{pod_uid.replace('-', '_')}.slice/"
        f"cri-containerd-{pod_container}.scope",
        podded.pid,
    )
    # Enough single pages for an audit finding on the pod's process.
    podded.grow(1200)
    reader = LinuxReader(host_id="containers")
    assert (reader.process(plain.pid).container_id, reader.process(plain.pid).pod_uid) == ("", "")
    assert reader.process(boxed.pid).container_id == docker_id
    assert reader.process(boxed.pid).pod_uid == ""
    assert reader.process(podded.pid).container_id == pod_container
    assert reader.process(podded.pid).pod_uid == pod_uid

    # ps: the JSON has both fields, the table a CONTAINER column with the short id.
    vmatlas = [sys.executable, "-m", "vmatlas"]
    ps = subprocess.run(
        [*vmatlas, "ps", "--local", "--format", "json", "--name", "planter"],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    by_pid = {p["process"]["pid"]: p["process"] for p in json.loads(ps.stdout)["processes"]}
    assert by_pid[boxed.pid]["container_id"] == docker_id
    assert (by_pid[podded.pid]["container_id"], by_pid[podded.pid]["pod_uid"]) == (
        pod_container,
        pod_uid,
    )
    assert by_pid[plain.pid]["container_id"] == ""
    table = subprocess.run(
        [*vmatlas, "ps", "--local", "--name", "planter"],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout.splitlines()  # fmt: skip
    assert table[0].split()[-1] == "CONTAINER"
    rows = {int(line.split()[0]): line.split()[-1] for line in table[1:] if line[:1] != "("}
    assert rows[boxed.pid] == docker_id[:12] and rows[plain.pid] == "-"

    # The audit names the container of the process it found.
    audit = subprocess.run(
        [*vmatlas, "audit", "--local", "--format", "json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    findings = [f for f in json.loads(audit.stdout)["findings"] if f["pid"] == podded.pid]
    assert findings and {(f["container_id"], f["pod_uid"]) for f in findings} == {
        (pod_container, pod_uid)
    }

    # Metrics: container labels on process series, and groups by pod.
    host = reader.host()
    status = HostStatus(host, online=True, first_seen_time=0.0, last_seen_time=0.0)
    items = [
        FleetProcess(host.host_id, reader.process_summary(p.pid, host))
        for p in (plain, boxed, podded)
    ]
    settings = MetricsSettings(container_labels=True, group_by="pod", top_processes=3)
    samples = [s for f in fleet_families([status], items, settings) for s in f.samples]
    labels = {s.labels["pid"]: s.labels for s in samples if s.name == "vmatlas_process_map_count"}
    assert labels[str(podded.pid)]["container_id"] == pod_container
    assert labels[str(podded.pid)]["pod_uid"] == pod_uid
    assert labels[str(plain.pid)]["container_id"] == ""
    groups = {s.labels["group"] for s in samples if s.name == "vmatlas_group_processes"}
    assert groups == {pod_uid, "host"}


def test_container_ids_travel_through_the_server(
    cgroups: Callable[[str, int], None], planter: Planter, tmp_path: Path
) -> None:
    from tests.conftest import wait_for
    from tests.server.test_http import OnlyPids
    from vmatlas.agents.uplink import Uplink
    from vmatlas.client import Client
    from vmatlas.server.app import FleetServer, ServerConfig

    container, pod = secrets.token_hex(32), str(uuid.uuid4())
    cgroups(f"kubepods/burstable/pod{pod}/{container}", planter.pid)
    server = FleetServer(
        ServerConfig(listen="127.0.0.1:0", data_dir=str(tmp_path / "data"), retain_seconds=0.0)
    ).start()
    uplink = Uplink(OnlyPids([planter.pid], host_id="k8s-node"), server.address).start()
    try:
        with Client(server.address, timeout=15) as client:
            wait_for(lambda: [h for h in client.hosts() if h.process_count], 30, "the push stored")
            (listed,) = client.processes(host="k8s-node")
            assert (listed.process.container_id, listed.process.pod_uid) == (container, pod)
            snapshot = client.snapshot(planter.pid, host="k8s-node")
            assert snapshot.process.container_id == container
    finally:
        uplink.stop()
        server.stop(0.5)
