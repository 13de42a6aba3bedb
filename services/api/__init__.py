"""The HTTP API (FastAPI): ``app`` builds it, ``deps`` is what its routes share, one module per family of routes
(each with a module-level ``router``), and ``dashboard`` the pages served under ``/ui``."""
