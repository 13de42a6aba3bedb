"""The API's attack tests: what a stranger, a hostile page or an analyst may not do (docs/security.md lists what
each proves)."""
