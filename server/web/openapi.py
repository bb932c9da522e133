"""The OpenAPI 3.0 document of the web API (served at ``/api/v1/openapi.json``).

It is the API's contract: the tests generate requests from it and check every answer
against it.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from vmatlas.layout import PictureClass
from vmatlas.metrics import GROUP_BY
from vmatlas.model import Summary

MAX_PID = 2**32 - 1


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(required: dict[str, Any], **optional: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "required": list(required),
        "properties": {**required, **optional},
    }


_STRING = {"type": "string"}
_INT = {"type": "integer"}
_NUMBER = {"type": "number"}
_BOOL = {"type": "boolean"}
_NULLABLE_NUMBER = {"type": "number", "nullable": True}


def _array(items: dict[str, Any], nullable: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "array", "items": items}
    if nullable:
        out["nullable"] = True
    return out


HOST = {
    "host_id": _STRING,
    "hostname": _STRING,
    "os": {"type": "string", "enum": ["unspecified", "linux", "windows"]},
    "max_map_count": _INT,
    "page_size_bytes": _INT,
    "allocation_granularity_bytes": _INT,
}
HOST_STATUS = _object(
    {
        **HOST,
        "online": _BOOL,
        "last_seen_time": _NUMBER,
        "process_count": _INT,
    },
    first_seen_time=_NUMBER,
    dropped_push_count=_INT,
    access_denied_count=_INT,
    replica_id=_STRING,
)
SCHEMAS: dict[str, Any] = {
    "Error": _object(
        {"error": _object({"status": {"type": "integer", "minimum": 400}, "message": _STRING})}
    ),
    "Host": _object(HOST),
    "HostStatus": HOST_STATUS,
    "Process": _object(
        {"pid": _INT, "name": _STRING, "start_time": _NUMBER},
        executable=_STRING,
        user=_STRING,
        command_line=_array(_STRING),
        parent_pid=_INT,
        pointer_bits=_INT,
        container_id=_STRING,
        pod_uid=_STRING,
    ),
    "Summary": _object(
        {name: (_NUMBER if name == "headroom_fraction" else _INT) for name in Summary.__slots__}
    ),
    "FleetProcess": _object(
        {
            "host_id": _STRING,
            "process": _ref("Process"),
            "summary": _ref("Summary"),
            "capture_time": _NUMBER,
        }
    ),
    "Fleet": _object(
        {
            "host_count": _INT,
            "online_count": _INT,
            "process_count": _INT,
            "worst_headroom_fraction": _NULLABLE_NUMBER,
            "hosts": _array(
                {
                    "allOf": [
                        _ref("HostStatus"),
                        _object(
                            {
                                "worst_headroom_fraction": _NULLABLE_NUMBER,
                                "worst_pid": _INT,
                                "worst_process": _STRING,
                            }
                        ),
                    ]
                }
            ),
            "closest": _array(_ref("FleetProcess")),
        }
    ),
    "History": _object(
        {
            "limit": _INT,
            "points": _array(_object({"time": _NUMBER, "map_count": _INT})),
            "snapshots": _array(
                _object({"snapshot_id": _STRING, "capture_time": _NUMBER, "map_count": _INT})
            ),
            "forecast": {
                **_object(
                    {
                        "slope_per_second": _NUMBER,
                        "intercept": _NUMBER,
                        "limit_time": _NULLABLE_NUMBER,
                    }
                ),
                "nullable": True,
            },
        }
    ),
    "TypeSummaryRow": _object(
        {
            "class": {"type": "string", "enum": [c.keyword for c in PictureClass]},
            "size_bytes": _INT,
            "committed_bytes": _INT,
            "resident_bytes": {"type": "integer", "nullable": True},
            "blocks": _INT,
            "largest_bytes": _INT,
        }
    ),
    "Regions": _object(
        {
            "count": _INT,
            "start": _array({"type": "string", "pattern": "^0x[0-9a-f]+$"}),
            "size": _array(_INT),
            "gap_before": _array(_INT),
            "unusable_before": _array(_INT, nullable=True),
            "class": _array(_INT),
            "state": _array(_INT),
            "perms": _array(_INT),
            "perms_values": _array(_STRING),
            "path": _array(_INT),
            "paths": _array(_STRING),
            "offset": _array(_INT),
            "rss_bytes": _array(_INT, nullable=True),
        },
    ),
    "Snapshot": _object(
        {
            "snapshot_id": _STRING,
            "host_id": _STRING,
            "capture_time": _NUMBER,
            "view": _STRING,
            "includes_residency": _BOOL,
            "host": _ref("Host"),
            "process": _ref("Process"),
            "summary": _ref("Summary"),
            "classes": _array(_STRING),
            "type_summary": _array(_ref("TypeSummaryRow")),
        },
        regions=_ref("Regions"),
    ),
    "FreshSnapshot": _object(
        {
            "snapshot_id": _STRING,
            "host_id": _STRING,
            "capture_time": _NUMBER,
            "summary": _ref("Summary"),
        }
    ),
    "Diff": _object(
        {
            "format": {"type": "string", "enum": ["vmatlas.diff/v1"]},
            "mode": {"type": "string", "enum": ["address", "identity"]},
            "before": {"type": "object"},
            "after": {"type": "object"},
            "summary": {"type": "object"},
            "classes": _array(
                _object(
                    {
                        "class": _STRING,
                        "label": _STRING,
                        "region_delta": _INT,
                        "byte_delta": _INT,
                    }
                )
            ),
            "changes": _array(
                _object(
                    {
                        "kind": _STRING,
                        "start": {"type": "string", "nullable": True},
                        "end": {"type": "string", "nullable": True},
                        "class": _STRING,
                        "label": _STRING,
                    }
                )
            ),
        }
    ),
    "Audit": _object(
        {
            "format": {"type": "string", "enum": ["vmatlas.audit/v1"]},
            "generated_at": _NUMBER,
            "host_count": _INT,
            "process_count": _INT,
            "findings": _array(
                _object(
                    {
                        "severity": _STRING,
                        "check": _STRING,
                        "host_id": _STRING,
                        "pid": _INT,
                        "message": _STRING,
                    }
                )
            ),
            "applications": _array({"type": "object"}),
            "recommendations": _array({"type": "object"}),
        }
    ),
}

_TEXT = {"type": "string", "maxLength": 256}
HOST_PARAM = {
    "name": "host",
    "in": "path",
    "required": True,
    "description": "the host id",
    "schema": {"type": "string", "minLength": 1, "maxLength": 256},
}
PID_PARAM = {
    "name": "pid",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PID},
}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "bad input",
        401: "no token, or an unknown, expired or revoked one",
        403: "the caller's role is too low, or the request is refused",
        404: "no such host, process or snapshot",
        409: "the request conflicts with the server's state",
        429: "too many requests waiting on the host's agent",
        503: "the host's agent is offline or failed",
        504: "the host's agent did not answer in time",
    }
    return {
        str(code): {
            "description": text[code],
            "content": {"application/json": {"schema": _ref("Error")}},
        }
        for code in codes
    }


def _ok(schema: str, description: str) -> dict[str, Any]:
    return {
        "200": {
            "description": description,
            "content": {"application/json": {"schema": _ref(schema)}},
        }
    }


_READ_ERRORS = (400, 401, 403, 404)


def _get(
    operation_id: str,
    summary: str,
    schema: str,
    parameters: list[dict[str, Any]],
    role: str,
    *extra_errors: int,
) -> dict[str, Any]:
    return {
        "get": {
            "operationId": operation_id,
            "summary": summary,
            "description": f"Needs the {role} role.",
            "parameters": parameters,
            "responses": {**_ok(schema, summary), **_errors(*_READ_ERRORS, *extra_errors)},
        }
    }


@cache
def openapi_document() -> dict[str, Any]:
    snapshot_path = "/hosts/{host}/processes/{pid}/snapshot"
    regions_param = _query("regions", {"type": "boolean"}, "include the region columns")
    paths: dict[str, Any] = {
        "/fleet": _get(
            "getFleet",
            "fleet-wide figures, every host with its worst headroom, the processes closest "
            "to their limit",
            "Fleet",
            [_query("closest", {"type": "integer", "minimum": 0, "maximum": 1000}, "how many")],
            "viewer",
        ),
        "/hosts": _get(
            "listHosts",
            "every known host",
            "HostList",
            [],
            "viewer",
        ),
        "/hosts/{host}": _get("getHost", "one host", "HostStatus", [HOST_PARAM], "viewer"),
        "/hosts/{host}/groups": _get(
            "listGroups",
            "the host's processes in groups (as the metrics group them), most maps first",
            "GroupList",
            [
                HOST_PARAM,
                _query(
                    "by",
                    {"type": "string", "enum": list(GROUP_BY)},
                    "name, container (or host) or pod (or host); known applications by "
                    "their own names",
                ),
            ],
            "viewer",
        ),
        "/processes": _get(
            "listProcesses",
            "the latest summary of each current process",
            "ProcessList",
            [
                _query("host", _TEXT, "one host's processes (all hosts when absent)"),
                _query("name", _TEXT, "names containing this"),
                _query(
                    "order",
                    {"type": "string", "enum": ["regions", "headroom", "pid"]},
                    "map count (largest first), headroom (smallest first) or pid",
                ),
                _query("limit", {"type": "integer", "minimum": 0, "maximum": 100000}, "at most"),
            ],
            "viewer",
        ),
        "/hosts/{host}/processes/{pid}/history": _get(
            "getHistory",
            "map count over time, stored snapshots, and the forecast to the host's limit",
            "History",
            [
                HOST_PARAM,
                PID_PARAM,
                _query("since", {"type": "number", "minimum": 0, "maximum": 1e11}, "epoch s"),
                _query("until", {"type": "number", "minimum": 0, "maximum": 1e11}, "epoch s"),
            ],
            "viewer",
        ),
        snapshot_path: {
            **_get(
                "getLatestSnapshot",
                "the latest stored snapshot of the process",
                "Snapshot",
                [HOST_PARAM, PID_PARAM, regions_param],
                "inspector",
            ),
            "post": {
                "operationId": "takeSnapshot",
                "summary": "take a fresh snapshot through the host's agent and store it",
                "description": "Needs the inspector role and the X-Vmatlas-Request: 1 header.",
                "parameters": [
                    HOST_PARAM,
                    PID_PARAM,
                    {
                        "name": "X-Vmatlas-Request",
                        "in": "header",
                        "required": True,
                        "schema": {"type": "string", "enum": ["1"]},
                    },
                ],
                "responses": {
                    **_ok("FreshSnapshot", "the snapshot taken"),
                    **_errors(*_READ_ERRORS, 429, 503, 504),
                },
            },
        },
        "/snapshots/{snapshot_id}": _get(
            "getStoredSnapshot",
            "a stored snapshot by id",
            "Snapshot",
            [
                {
                    "name": "snapshot_id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "minLength": 1, "maxLength": 256},
                },
                regions_param,
            ],
            "inspector",
        ),
        "/diff": _get(
            "getDiff",
            "what changed between two stored snapshots, grouped by class",
            "Diff",
            [
                {
                    "name": side,
                    "in": "query",
                    "required": True,
                    "description": "a stored snapshot id, or HOST:PID for its latest",
                    "schema": {"type": "string", "minLength": 1, "maxLength": 256},
                }
                for side in ("a", "b")
            ]
            + [
                _query(
                    "mode",
                    {"type": "string", "enum": ["auto", "address", "identity"]},
                    "by address (one process), by identity (two), or chosen (auto)",
                )
            ],
            "viewer (change addresses need inspector)",
        ),
        "/audit": _get("getAudit", "the fleet audit", "Audit", [], "viewer"),
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "vmatlas web API",
            "version": "1",
            "description": (
                "The fleet, its processes and their address spaces. Authenticate with "
                "the same tokens as gRPC: `Authorization: Bearer TOKEN`, or the cookie "
                "the login form sets. A viewer gets no address anywhere."
            ),
        },
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearer": []}, {"cookie": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "cookie": {"type": "apiKey", "in": "cookie", "name": "vmatlas_token"},
            },
            "schemas": {
                **SCHEMAS,
                "HostList": _object({"hosts": _array(_ref("HostStatus"))}),
                "ProcessList": _object({"processes": _array(_ref("FleetProcess"))}),
                "GroupList": _object(
                    {
                        "by": {"type": "string", "enum": list(GROUP_BY)},
                        "groups": _array(
                            _object(
                                {
                                    "name": _STRING,
                                    "processes": _INT,
                                    "map_count": _INT,
                                    "map_count_max": _INT,
                                    "map_count_ratio_max": _NUMBER,
                                    "committed_bytes": _INT,
                                    "reserved_bytes": _INT,
                                    "pids": _array(_INT),
                                }
                            )
                        ),
                    }
                ),
            },
        },
    }
