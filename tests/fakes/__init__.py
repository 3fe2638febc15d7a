"""Local stand-ins for external platforms (HTTP servers on 127.0.0.1), shared by tests."""
