"""Measured efficiency curves and fitted kernel models that replace a GPU profile's constants.

Modules, bottom up (each imports only those above it):

* :mod:`.model`: :class:`~moesim.calibration.model.Calibration` and its :class:`~moesim.calibration.model.Curve`
  (the efficiency equations); it follows :class:`moesim.compute.EfficiencyModel`, the protocol the cost model
  calls.
* :mod:`.file_format`: the ``calibration.json`` document (schemas 1 and 2), read, validated and written.
* :mod:`.fit`: curves fitted to measured GEMM/copy records.
* :mod:`.resolve`: what ``--calibration auto|none|FILE`` runs with.

This ``__init__`` imports nothing, so :mod:`moesim.compute` can import nothing of it and still be described by it.
"""
