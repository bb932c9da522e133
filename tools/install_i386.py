#!/usr/bin/env python3
"""Installs i386 packages (Wine's 32-bit loader) beside their native counterparts, also
when the mirror's i386 index lags the native one.

    tools/install_i386.py [--dry-run] PACKAGE:i386 ...

A multi-arch library is installed for both architectures at one version only, so a
mirror that offers a security update for amd64 without its i386 build leaves the plain
install unresolvable (seen on bookworm: the bookworm-security i386 index failing its
size check while the amd64 one came). Then the install is planned again from the
release itself (``-t CODENAME``: the point release ships every library for both
architectures), without recommends:

- native libraries older than the release's version move up to it;
- native libraries newer than every i386 build of them move back to the release's
  version, and with each the packages built from its source at its version (they depend
  on that exact version). That undoes a security update of those packages until the
  mirror delivers its i386 build, so they are named, and the install is refused if apt
  would remove anything or move back anything else. Once the mirror has both builds,
  ``apt-get upgrade`` moves both architectures up together. Moving back happens only
  when ``VMATLAS_I386_ALLOW_DOWNGRADE=1`` is set (CI sets it on its throwaway machines);
  otherwise the plan is printed and nothing installed.

Exit status 0: installed, or nothing to do; 1: not installed, the reason on stderr.
Run as root (``--dry-run`` does not need it).
"""

from __future__ import annotations

import os
import subprocess
import sys

APT_GET = ("apt-get", "-qq", "-o", "DPkg::Lock::Timeout=600")
WITHOUT_RECOMMENDS = ("install", "-y", "--no-install-recommends")
# Dependencies in the sense of what must be installed: alternatives included, so the
# closure is a superset of what apt picks (a library outside it is left alone).
CLOSURE = (
    "apt-cache",
    "depends",
    "--recurse",
    "--no-recommends",
    "--no-suggests",
    "--no-conflicts",
    "--no-breaks",
    "--no-replaces",
    "--no-enhances",
)
INSTALLED_FORMAT = (
    "${db:Status-Abbrev}\t${Package}\t${Architecture}\t${Multi-Arch}\t${Version}"
    "\t${source:Package}\n"
)


def output(*command: str) -> str:
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def newer(version: str, than: str) -> bool:
    return subprocess.run(["dpkg", "--compare-versions", version, "gt", than]).returncode == 0


def candidates(release: str, packages: list[str]) -> dict[str, str]:
    """name (no architecture) -> the version ``-t release`` installs, of i386 packages."""
    found: dict[str, str] = {}
    name = ""
    for line in output("apt-cache", "-t", release, "policy", *packages).splitlines():
        if not line.startswith(" "):
            name = line.rstrip(":").removesuffix(":i386")
        elif line.split()[:1] == ["Candidate:"] and line.split()[1] != "(none)":
            found[name] = line.split()[1]
    return found


def moves_back(release: str, native: str, packages: list[str]) -> list[str]:
    """``package=version`` for each installed package to move back (see the module)."""
    closure = sorted(
        {
            line
            for line in output(*CLOSURE, *packages).splitlines()
            if line.endswith(":i386") and not line.startswith(" ")
        }
    )
    i386 = candidates(release, closure) if closure else {}
    installed = [
        line.split("\t")
        for line in output("dpkg-query", "-W", "-f", INSTALLED_FORMAT).splitlines()
        if line.startswith("ii")
    ]
    moves = set()
    for _, name, architecture, multi_arch, version, source in installed:
        if architecture != native or multi_arch != "same" or name not in i386:
            continue
        if not newer(version, i386[name]):
            continue
        for _, sibling, sibling_architecture, _, sibling_version, sibling_source in installed:
            if (sibling_source, sibling_version) == (source, version) and (
                sibling_architecture in (native, "all")
            ):
                moves.add(f"{sibling}={i386[name]}")
    return sorted(moves)


def refusals(simulated: str, moves: list[str]) -> list[str]:
    """What in apt's simulated plan goes beyond ``moves``: removals, other downgrades."""
    found = []
    for line in simulated.splitlines():
        words = line.split()
        if words[:1] == ["Remv"]:
            found.append(f"it would remove {words[1]}")
        elif words[:1] == ["Inst"] and len(words) > 3 and words[2].startswith("["):
            package, old, new = words[1], words[2].strip("[]"), words[3].lstrip("(")
            if newer(old, new) and f"{package}={new}" not in moves:
                found.append(f"it would move {package} back from {old} to {new}")
    return found


def main(arguments: list[str]) -> int:
    dry_run = arguments[:1] == ["--dry-run"]
    packages = arguments[1:] if dry_run else arguments
    plain = [*APT_GET, *WITHOUT_RECOMMENDS, *packages]
    if subprocess.run([*plain, "-s"], capture_output=True).returncode == 0:
        print("installing from the current lists:", " ".join(packages), file=sys.stderr)
        if dry_run:
            return 0
        if subprocess.run(plain, stdout=subprocess.DEVNULL).returncode != 0:
            print(f"apt-get could not install {' '.join(packages)}", file=sys.stderr)
            return 1
        print("installed", " ".join(packages), file=sys.stderr)
        return 0
    release = output("sh", "-c", ". /etc/os-release && echo $VERSION_CODENAME").strip()
    native = output("dpkg", "--print-architecture").strip()
    moves = moves_back(release, native, packages)
    plan = [*APT_GET, "-t", release, *WITHOUT_RECOMMENDS, "--allow-downgrades", *packages, *moves]
    simulated = subprocess.run([*plan, "-s"], capture_output=True, text=True)
    if simulated.returncode != 0:
        problems = [line for line in simulated.stdout.splitlines() if line.startswith(" ")]
        problems += simulated.stderr.strip().splitlines()
    else:
        problems = refusals(simulated.stdout, moves)
    if problems:
        print(f"not installing {' '.join(packages)} from {release}:", file=sys.stderr)
        print("\n".join(f"  {line.strip()}" for line in problems[:20]), file=sys.stderr)
        return 1
    print(f"installing {' '.join(packages)} from {release}", file=sys.stderr)
    if moves:
        print("moving back to the version of their i386 builds:", *moves, file=sys.stderr)
    if dry_run:
        return 0
    if moves and os.environ.get("VMATLAS_I386_ALLOW_DOWNGRADE") != "1":
        print(
            "not installed: that undoes security updates of the packages above until the "
            "mirror has their i386 builds; set VMATLAS_I386_ALLOW_DOWNGRADE=1 to allow it",
            file=sys.stderr,
        )
        return 1
    names = [move.split("=")[0] for move in moves]
    automatic = output("apt-mark", "showauto", *names).split() if names else []
    if subprocess.run(plan, stdout=subprocess.DEVNULL).returncode != 0:
        print(f"apt-get could not install {' '.join(packages)} from {release}", file=sys.stderr)
        return 1
    if automatic:  # named on the command line, apt marked them manual
        output("apt-mark", "auto", *automatic)
    print(f"installed {' '.join(packages)} from {release}", file=sys.stderr)
    if moves:
        print(
            "moved back until the mirror has their i386 builds (apt-get upgrade then moves "
            "both architectures up):",
            *moves,
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
