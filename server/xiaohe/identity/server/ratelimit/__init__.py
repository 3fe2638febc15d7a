"""Xiaohe Identity server."""
