"""Training configs: the defaults of every key, their checks, and what may change on resume."""
