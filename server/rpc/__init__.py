"""The fleet server's gRPC front end: servicers that translate ``vmatlas.v1`` requests
into calls on :mod:`vmatlas.server.domain` and its model results and errors back into
responses and status codes. No rule of the fleet lives here."""
