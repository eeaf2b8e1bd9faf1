"""The scheduling domain: pure rules, given `now`; no I/O, no gRPC."""
