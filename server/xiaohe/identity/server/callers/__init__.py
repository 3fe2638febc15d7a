"""API clients (callers), their credentials and grants."""
