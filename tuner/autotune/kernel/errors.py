"""The error of a bad :class:`~tuner.autotune.kernel.spec.KernelTuneSpec` field, which keeps its parts.

The message names the spec field (``autotune kernel: top_k: must be <= E (4), got 8``); a front end that
spells the fields its own way (the CLI's ``--top-k``) rebuilds the message from ``source``, ``field`` and
:meth:`KernelSpecError.problem_with`.
"""

from __future__ import annotations

from collections.abc import Callable

from moesim.errors import SpecError

SOURCE = "autotune kernel"


class KernelSpecError(SpecError):
    """``SOURCE: FIELD: PROBLEM``; ``problem`` may hold ``{name}`` placeholders for the other fields in ``names``
    that it mentions, filled with the field names here and with the front end's names by ``problem_with``."""

    def __init__(self, field: str, problem: str, source: str = SOURCE, names: tuple[str, ...] = ()) -> None:
        self.field, self.source, self.names = field, source, names
        self._problem = problem
        super().__init__(f"{source}: {field}: {self.problem_with(lambda name: name)}")

    def problem_with(self, spell: Callable[[str], str]) -> str:
        """The problem with every mentioned field spelled by ``spell(field)``."""
        if not self.names:
            return self._problem
        return self._problem.format(**{name: spell(name) for name in self.names})
