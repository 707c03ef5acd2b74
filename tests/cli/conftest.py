"""Fixtures the CLI tests share."""

from pathlib import Path

import pytest

from tests.cli.cli_harness import make_work


@pytest.fixture()
def work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """The folder every refusal test starts from (see ``make_work``)."""
    return make_work(tmp_path, capsys)
