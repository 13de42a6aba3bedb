"""The HTTP API (FastAPI): ``app`` builds it, ``deps`` is what its routers share, one module per router."""
