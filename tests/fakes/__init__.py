"""Local stand-ins for external platforms (HTTP servers on 127.0.0.1) that speak their real
formats and check what they are sent, signatures included; shared by tests."""
