"""Shipped routing traces (data only; see README.md)."""
