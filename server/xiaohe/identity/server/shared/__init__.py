"""Helpers that several capability packages use; they import nothing of the server above them."""
