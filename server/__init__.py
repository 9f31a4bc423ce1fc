"""LongSHAP's gRPC server: `longshap serve` (see server.app)."""
