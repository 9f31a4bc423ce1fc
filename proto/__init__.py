"""The wire format (package longshap.v1): generated messages and stubs, and `wire` conversions.

Imports neither the client, the server nor the engine; both sides build on it.
"""
