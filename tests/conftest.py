import pathlib

import pytest

INTEGRATION = pathlib.Path(__file__).parent / "integration"
SECURITY = pathlib.Path(__file__).parent / "security"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark what needs the network: everything under integration/, and the security tests that
    use the services (the rest of the security suite runs with the unit tests' needs)."""
    for item in items:
        parents = pathlib.Path(str(item.fspath)).parents
        needs_services = "services" in getattr(item, "fixturenames", ())
        if INTEGRATION in parents or (SECURITY in parents and needs_services):
            item.add_marker(pytest.mark.integration)
