"""Browser tier: the HTML report rendered by a real headless Chromium (Debian's `chromium`).

Never skipped: `make test` installs Chromium (`make browser`) before running these.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import mark_folder


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mark_folder(items, Path(__file__).parent, pytest.mark.browser)


@pytest.fixture(scope="session")
def chromium() -> str:
    found = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("Chromium not found; run `make browser` (installs Debian's chromium) or use `make test`")
    return found
