"""Sizes moesim accepts: limits, not measurements, far above the shipped models and clusters and low enough that
their arrays fit in memory.

Per-layer transitions are [E, E] float64: 8,192 experts make 512 MB (DeepSeek-V3 has 256, Kimi K2 384); 1,024
hidden layers (DeepSeek-V3: 61); widths up to 2^20 (DeepSeek-V3 hidden: 7,168); 2^17 GPUs in one cluster, checked
per level and for their product (the largest shipped profile has 64; the placement benchmark scales one to 256).
"""

from __future__ import annotations

MAX_EXPERTS = 8192
MAX_LAYERS = 1024
MAX_WIDTH = 1 << 20
MAX_GPUS = 1 << 17
# Tokens one GPU routes in one step (--tokens-per-gpu, a scenario's tokens_per_gpu): 2^24 = 16.8 M, a limit far
# above any batch (serving steps and prefill chunks are 1-64 k tokens per GPU, training micro-batches up to a few
# 100 k); a larger value is a typo (10^30 used to overflow the simulator's int64 counts with a warning).
MAX_TOKENS_PER_GPU = 1 << 24
