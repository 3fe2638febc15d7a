"""Test doubles that speak real third-party formats on local ports."""
