"""What-if sweeps: scenario files, their evaluation and cache (``sweep``), the report and its plots.

This layer sits above ``moesim`` and ``tuner``: a scenario may solve a placement, so it may import both; neither
imports it.
"""
