"""Access-token encoding and verification, shared by the server and the SDK; no grpc inside."""
