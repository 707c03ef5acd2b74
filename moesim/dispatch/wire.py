"""Bytes of one token row on the wire: ``B`` = BF16 ``2H``; FP8 ``H + 4H/128`` (one FP32 scale per 128
channels, DeepEP's format)."""

from __future__ import annotations

from moesim.errors import field_error

__all__ = ["DTYPES", "bytes_per_token"]

DTYPES = ("fp8", "bf16")


def bytes_per_token(hidden: int, dtype: str) -> float:
    """Bytes of one token row on the wire: BF16 ``2H``; FP8 ``H`` plus one FP32 scale per 128 channels."""
    if dtype == "bf16":
        return 2.0 * hidden
    if dtype == "fp8":
        return hidden * (1.0 + 4.0 / 128.0)
    raise field_error("options", "dtype", f"must be one of {', '.join(DTYPES)}, got {dtype!r}")
