"""Flows: the use cases that span capabilities (login, registration, password reset, phone
change, recovery, consent), one module each, reading top to bottom as the steps of the flow.

A flow checks its input, loads what it needs, verifies the proofs (tickets, passwords),
then makes its change in one unit of work (`Database.begin()`): account, sessions, audit
record and outbox notice commit together or not at all, and side effects outside SQL
(revocations published to Redis, messages handed to the dispatcher) follow the commit.
Capabilities know nothing of each other; only flows combine them.
"""
