"""Property tests for the /proc text parsers: whatever the text, they return a table or
raise ValueError; lines in the kernel's own format come back exactly."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from vmatlas.agents.linux import parse_maps, parse_smaps
from vmatlas.model import RESIDENCY_FIELDS, RegionKind

# Every test here runs over both capture paths: the C loops and the pure-Python ones.
pytestmark = pytest.mark.usefixtures("capture_path")

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ADDRESS = st.integers(min_value=0, max_value=(1 << 64) - 2)
PERMS = st.sampled_from([r + w + x + s for r in "-r" for w in "-w" for x in "-x" for s in "ps"])
# Paths as the kernel prints them: no newline (it escapes one as \012), no leading
# blank (the padding before the path absorbs it).
PATH = st.one_of(
    st.just(""),
    st.sampled_from(["[heap]", "[stack]", "[vdso]", "[vvar]", "[anon:jemalloc]", "/memfd:x"]),
    st.text(
        st.characters(blacklist_characters="\n\r", blacklist_categories=("Cs",)), max_size=40
    ).map(lambda t: "/" + t.lstrip()),
)


@st.composite
def maps_line(draw: st.DrawFn) -> tuple[str, dict[str, object]]:
    start = draw(ADDRESS)
    end = draw(st.integers(min_value=start + 1, max_value=(1 << 64) - 1))
    perms = draw(PERMS)
    offset = draw(st.integers(min_value=0, max_value=(1 << 64) - 1))
    major = draw(st.integers(min_value=0, max_value=0xFFF))
    minor = draw(st.integers(min_value=0, max_value=0xFFFFF))
    inode = draw(st.integers(min_value=0, max_value=(1 << 64) - 1))
    path = draw(PATH)
    deleted = draw(st.booleans()) and path.startswith("/") and path.strip() != "/"
    tail = path + (" (deleted)" if deleted else "")
    prefix = f"{start:08x}-{end:08x} {perms} {offset:08x} {major:02x}:{minor:02x} {inode}"
    line = (prefix.ljust(73) + tail) if tail else prefix + " "
    facts = {
        "start": start,
        "end": end,
        "protection": sum(bit for c, bit in zip(perms, (1, 2, 4, 8), strict=True) if c in "rwxs"),
        "offset": offset,
        "device": os.makedev(major, minor),
        "inode": inode,
        "path": path,
        "deleted": deleted,
    }
    return line, facts


@SETTINGS
@given(st.lists(maps_line(), max_size=12))
def test_kernel_format_lines_parse_back_exactly(lines: list[tuple[str, dict[str, object]]]) -> None:
    table = parse_maps("".join(line + "\n" for line, _ in lines))
    assert len(table) == len(lines)
    for i, (_, facts) in enumerate(lines):
        row = {name: getattr(table, name)[i] for name in facts}
        assert row == facts
    # The same text as bytes, as procfs hands it over, gives the same table.
    encoded = "".join(line + "\n" for line, _ in lines).encode("utf-8", "surrogateescape")
    assert parse_maps(encoded) == table


@SETTINGS
@given(st.lists(maps_line(), min_size=1, max_size=6), st.data())
def test_kernel_format_smaps_parse_back_exactly(
    lines: list[tuple[str, dict[str, object]]], data: st.DataObject
) -> None:
    keys = ["Rss", "Pss", "Shared_Clean", "Private_Dirty", "Swap", "Locked"]
    blocks, expected = [], []
    for line, _ in lines:
        sizes = st.integers(0, 1 << 40)
        values = data.draw(st.lists(sizes, min_size=len(keys), max_size=len(keys)))
        block = [line] + [f"{k}:{v:>16} kB" for k, v in zip(keys, values, strict=True)]
        block.append("VmFlags: rd wr mr mw me ac")
        blocks.append("\n".join(block))
        expected.append(values)
    table = parse_smaps("\n".join(blocks) + "\n")
    assert [table.start[i] for i in range(len(lines))] == [f["start"] for _, f in lines]
    names = {
        "Rss": "rss_bytes",
        "Pss": "pss_bytes",
        "Shared_Clean": "shared_clean_bytes",
        "Private_Dirty": "private_dirty_bytes",
        "Swap": "swap_bytes",
        "Locked": "locked_bytes",
    }
    for i, values in enumerate(expected):
        for key, value in zip(keys, values, strict=True):
            assert table.residency[names[key]][i] == value * 1024
    assert set(table.residency) == set(RESIDENCY_FIELDS)


NOISY_TEXT = st.one_of(
    st.text(max_size=300),
    st.lists(
        st.one_of(
            maps_line().map(lambda pair: pair[0]),
            st.text(alphabet="0123456789abcdef-:rwxps kB()[]/\t", max_size=90),
            st.sampled_from(["Rss:  4 kB", "Pss: x kB", "VmFlags: rd", "Rss:", ""]),
        ),
        max_size=15,
    ).map("\n".join),
)


@SETTINGS
@given(NOISY_TEXT)
def test_arbitrary_maps_text_gives_a_table(text: str) -> None:
    table = parse_maps(text)
    n = len(table)
    assert all(len(getattr(table, c)) == n for c in ("end", "state", "kind", "path", "inode"))
    assert all(kind in set(RegionKind) for kind in table.kind)


@SETTINGS
@given(st.one_of(NOISY_TEXT, st.binary(max_size=300)))
@example("0-0 ---p 0 0:0 0\nPss: 0 kB\nPss: 0 kB")  # a field twice in one region
def test_arbitrary_smaps_text_gives_a_table_or_value_error(text: str | bytes) -> None:
    try:
        table = parse_smaps(text)
    except ValueError:
        return
    n = len(table)
    assert all(len(column) == n for column in table.residency.values())
