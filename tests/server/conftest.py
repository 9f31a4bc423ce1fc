from serving import stub, tiny_server  # noqa: F401  (fixtures)
