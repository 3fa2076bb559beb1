"""Tests of ``autoquant.tuning`` (mirrors the package tree)."""
