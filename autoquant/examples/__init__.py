"""Small real models and data sets that ship with autoquant's dependencies (no downloads)."""
