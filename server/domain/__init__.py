"""The fleet server's domain: what the server knows and does, apart from any transport.

- :mod:`.hub`: the connected agents (one :class:`~.hub.AgentSession` per host id),
  their snapshot requests in flight, and their hosts' online state in the store.
- :mod:`.fleet`: the fleet queries (hosts, processes, history, stored and fresh
  snapshots) as :class:`~.fleet.FleetQueries`.
- :mod:`.analysis`: diff and audit over what the store holds, as
  :class:`~.analysis.Analysis`.
- :mod:`.jobs`: the singleton jobs (retention, offline marking, partition upkeep),
  each run by one server of those sharing a store, under a lease.

Everything here takes and returns model objects (:mod:`vmatlas.model`,
:mod:`vmatlas.fleet`) and raises :mod:`vmatlas.errors`; none of it imports grpc or
protobuf. The gRPC servicers (:mod:`vmatlas.server.rpc`) and any other front end
(an HTTP API, the command line's own views) are adapters that translate requests
into these calls and their results and errors back.
"""
