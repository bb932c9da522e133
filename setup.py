"""The optional C extension (vmatlas._native); everything else is in pyproject.toml.

It is built when a C compiler is present and VMATLAS_NO_NATIVE is not set; a failed
build leaves the pure-Python path, which gives the same results (setuptools' optional
extension). VMATLAS_NO_NATIVE=1 makes a pure wheel, as Windows installs want.
"""

import os
import sys

from setuptools import Extension, setup

native = [
    Extension(
        "vmatlas._native",
        ["vmatlas/_native.c"],
        optional=True,
        extra_compile_args=[] if sys.platform == "win32" else ["-O2", "-std=c11", "-Wall"],
    )
]

setup(ext_modules=[] if os.environ.get("VMATLAS_NO_NATIVE") else native)
