"""The one place that strips addresses from what a viewer receives.

An address-space layout defeats ASLR for whoever sees it. Viewers get summaries,
audits and diffs by identity, never an address: the auth interceptor passes every
response to a viewer through :func:`strip_addresses`, and error details through
:func:`scrub_text`.

What counts as an address is listed here and nowhere else: a message that carries
one adds its field (full name) to :data:`ADDRESS_FIELDS`, or, when the whole message
is a layout, its type to :data:`LAYOUT_MESSAGES`.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from vmatlas.wire import Serialized

# Messages that are a layout as a whole: a viewer gets them empty. (A RegionTable's
# starts, ends and the gaps between them are the layout; its paths and sizes in order
# still locate libraries relative to each other.)
LAYOUT_MESSAGES: frozenset[str] = frozenset({"vmatlas.v1.RegionTable"})

# Single fields that hold an absolute address, wherever they appear.
ADDRESS_FIELDS: frozenset[str] = frozenset(
    {
        "vmatlas.v1.RegionTable.start_delta_pages",
        "vmatlas.v1.RegionTable.allocation_base",
        # Serialized Snapshots (the fleet forwards them without decoding).
        "vmatlas.v1.GetHostSnapshotResponse.snapshot",
        "vmatlas.v1.GetStoredSnapshotResponse.snapshot",
        "vmatlas.v1.SnapshotResult.snapshot_header",
        "vmatlas.v1.SnapshotResult.regions",
        "vmatlas.v1.TakeHostSnapshotResponse.snapshot_header",
        "vmatlas.v1.TakeHostSnapshotResponse.regions",
        # A diff by address names the range of each change.
        "vmatlas.v1.DiffChange.start_address",
        "vmatlas.v1.DiffChange.end_address",
    }
)

# Hex addresses in text: 0x-prefixed, or bare runs of 8+ hex digits with a letter or
# a range dash (as /proc/PID/maps prints them): enough to rebuild a layout.
_ADDRESS_TEXT = re.compile(
    r"\b0[xX][0-9a-fA-F]{4,}\b|\b[0-9a-fA-F]{8,16}-[0-9a-fA-F]{8,16}\b"
    r"|\b(?=[0-9a-fA-F]*[a-fA-F])(?=[0-9a-fA-F]*[0-9])[0-9a-fA-F]{8,16}\b"
)
REDACTED = "<address>"


def _is_message(field: Any) -> bool:
    return bool(field.type == FieldDescriptor.TYPE_MESSAGE)


@cache
def _may_hold_addresses(descriptor: Any) -> bool:
    """Whether a message of this type can contain an address at any depth."""
    return bool(_search(descriptor, frozenset()))


def _search(descriptor: Any, seen: frozenset[str]) -> bool:
    if descriptor.full_name in LAYOUT_MESSAGES:
        return True
    if descriptor.full_name in seen:
        return False
    seen = seen | {descriptor.full_name}
    for field in descriptor.fields:
        if field.full_name in ADDRESS_FIELDS:
            return True
        if _is_message(field) and _search(field.message_type, seen):
            return True
    return False


def strip_addresses(response: Message | Serialized) -> Message:
    """Remove every address from ``response`` in place (and return it); a response
    still in its wire bytes is parsed first, and the stripped message returned."""
    return _strip(response.parse() if isinstance(response, Serialized) else response)


def _strip(message: Message) -> Message:
    descriptor = message.DESCRIPTOR
    if not _may_hold_addresses(descriptor):
        return message
    if descriptor.full_name in LAYOUT_MESSAGES:
        message.Clear()
        return message
    field: Any
    for field, value in message.ListFields():
        if field.full_name in ADDRESS_FIELDS or (
            _is_message(field)
            and not field.is_repeated
            and field.message_type.full_name in LAYOUT_MESSAGES
        ):
            message.ClearField(field.name)
        elif _is_message(field) and _may_hold_addresses(field.message_type):
            if field.message_type.GetOptions().map_entry:
                value_field = field.message_type.fields_by_name["value"]
                if _is_message(value_field):
                    for item in value.values():
                        _strip(item)
            elif field.is_repeated:
                for item in value:
                    _strip(item)
            else:
                _strip(value)
    return message


def address_fields_set(message: Message, prefix: str = "") -> list[str]:
    """Paths of the addresses left in ``message`` (empty when it is clean)."""
    if message.DESCRIPTOR.full_name in LAYOUT_MESSAGES:
        return [prefix.rstrip(".") or message.DESCRIPTOR.name] if message.ByteSize() else []
    found: list[str] = []
    field: Any
    for field, value in message.ListFields():
        path = f"{prefix}{field.name}"
        if field.full_name in ADDRESS_FIELDS:
            found.append(path)
        elif _is_message(field):
            if field.message_type.GetOptions().map_entry:
                value_is_message = _is_message(field.message_type.fields_by_name["value"])
                items = (
                    [(f"{path}[{k!r}].", v) for k, v in value.items()] if value_is_message else []
                )
            elif field.is_repeated:
                items = [(f"{path}[{i}].", item) for i, item in enumerate(value)]
            else:
                items = [(f"{path}.", value)]
            for item_prefix, item in items:
                found.extend(address_fields_set(item, item_prefix))
    return found


def scrub_text(text: str) -> str:
    """``text`` with anything that looks like a hex address replaced."""
    return _ADDRESS_TEXT.sub(REDACTED, text)
