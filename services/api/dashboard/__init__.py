"""The dashboard: a live stacks board, runs and run pages, served by the API process under ``/ui``.

A part of the API: its pages use the API's dependencies and credential check (``tickflow.api.deps``) and call the
same HTTP routes as the SDK, so it lives inside the package whose routes it renders.

``pages`` holds the routes and templates, ``board`` the live fold of the stacks board from the log, ``session``
the sign-in for an API with a token. Assets ship in ``static/`` (vendored htmx and uPlot, with their licenses).
"""
