import pathlib

import pytest

INTEGRATION = pathlib.Path(__file__).parent / "integration"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION in pathlib.Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)
