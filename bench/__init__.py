"""The vmatlas benchmark harness: ``python -m bench`` (``--quick`` for a short run).

Every figure is a ratio to a reference measured in the same run, rounds interleaved;
see :mod:`bench.run` for what is measured and how.
"""
