"""The optional C extension (vmatlas._native); everything else is in pyproject.toml.

It is built when a C compiler is present and VMATLAS_NO_NATIVE is not set; a failed
build leaves the pure-Python path, which gives the same results (setuptools' optional
extension). VMATLAS_NO_NATIVE=1 makes a pure wheel, as Windows installs want.
"""

import os
import sys
import zlib

from setuptools import Extension, setup

SOURCE = "vmatlas/_native.c"
# The build carries its source's CRC-32, so that an extension left behind by an older
# checkout is told apart from a current one (vmatlas/native.py) instead of failing deep
# inside a call with a changed signature. (A checksum, not a hash: hashlib would load
# OpenSSL into every process that imports the loader, the agent included.)
with open(SOURCE, "rb") as source:
    checksum = f"{zlib.crc32(source.read()):08x}"

native = [
    Extension(
        "vmatlas._native",
        [SOURCE],
        optional=True,
        define_macros=[("VMATLAS_NATIVE_SOURCE_CRC32", f'"{checksum}"')],
        extra_compile_args=[] if sys.platform == "win32" else ["-O2", "-std=c11", "-Wall"],
    )
]

setup(ext_modules=[] if os.environ.get("VMATLAS_NO_NATIVE") else native)
