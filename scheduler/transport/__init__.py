"""The gRPC transport: servicers, proto <-> domain conversion, error -> status mapping."""
