"""vmatlas: see and audit process address spaces across Linux and Windows hosts.

The shared core lives here: the plain-data model (:mod:`vmatlas.model`), the error
hierarchy (:mod:`vmatlas.errors`), the summary formulas (:mod:`vmatlas.summary`) and the
one protobuf boundary (:mod:`vmatlas.wire`). The parts are subpackages:
:mod:`vmatlas.agents` (per-host readers and the agent service), :mod:`vmatlas.server`
(the central server) and :mod:`vmatlas.client` (the Python client library).
"""

__version__ = "0.1.0"
