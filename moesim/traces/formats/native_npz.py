"""Format ``npz``: moesim's native ``.npz`` (a zip archive whose entries are all ``.npy``)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from moesim.traces.formats.base import Probe, ReadRequest
from moesim.traces.native import load_native_npz
from moesim.traces.trace import RoutingTrace


@dataclass(frozen=True)
class NativeNpz:
    """np.savez writes ``*.npy`` entries; :func:`moesim.traces.native.load_native_npz` reads them."""

    name: str = "npz"
    descriptions: tuple[str, ...] = ("native .npz",)

    def matches(self, probe: Probe) -> bool:
        names = probe.zip_names
        return bool(names) and all(n.endswith(".npy") for n in names)

    def read(self, path: str | os.PathLike[str], request: ReadRequest) -> RoutingTrace:
        return load_native_npz(path)


FORMAT = NativeNpz()
