"""`make loadtest`: drive a running Xiaohe Identity deployment with Locust and report on it.

The driver (`__main__`) measures the generator's own ceiling against a local echo
server, seeds test accounts, runs Locust as a subprocess against the one target it
was given, and turns Locust's CSV output into `results/loadtest-<timestamp>/`.
Only `locustfile.py` runs under gevent, and only inside the Locust process.
"""
