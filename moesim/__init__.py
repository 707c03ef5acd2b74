"""moesim: a cost model and simulator for Mixture-of-Experts layers on GPU clusters.

Pure Python + numpy + networkx. This package never imports ``tuner`` or ``kernels`` at import time:
dependencies point one way (kernels and tuner may use moesim; moesim uses neither).
"""

__version__ = "0.1.0"
