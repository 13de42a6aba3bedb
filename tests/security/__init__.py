"""The API's attack tests: what a stranger, a hostile page or an analyst may not do (README "Security" lists what
each proves)."""
