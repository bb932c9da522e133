"""Transport security, authentication and authorisation for every vmatlas server.

- :mod:`~vmatlas.security.tls`: TLS and mutual-TLS credentials, and the identity the
  peer's certificate names.
- :mod:`~vmatlas.security.tokens`: the bearer-token file (hashes only, never tokens).
- :mod:`~vmatlas.security.auth`: the one fail-closed server interceptor (tokens, roles,
  the method policy, rate limits) and the caller's identity for servicers.
- :mod:`~vmatlas.security.redact`: the one place that strips addresses from responses.
- :mod:`~vmatlas.security.certs`: a small private CA for a fleet.
- :mod:`~vmatlas.security.options`: the command-line flags servers share, and the rule
  that nothing serves address layouts beyond loopback without TLS and authentication.

An address-space layout defeats ASLR for whoever sees it, so addresses are secrets.
"""
