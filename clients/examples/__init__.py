"""Runnable examples of business systems built on the Xiaohe Identity SDK."""
