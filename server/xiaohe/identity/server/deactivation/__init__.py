"""Deactivation (注销, issue 14): cooling-off records; pending keys kept outside the database."""
