"""An example business service: a small "workbench" of an enterprise-services system.

It authenticates every call with `BearerAuthInterceptor` and a `TokenVerifier` that
follows the revocation feed, so it refuses a signed-out session's token within a
second without calling the identity service per request. See `__main__.py` to run
it and docs/integrator-guide.md §18.
"""
