"""The security suite: one test per attack (issue 21's B-list and the H-list that held).

Tests here that need Kafka and Redis use the integration fixtures, imported below, and are marked
``integration`` like those (``tests/conftest.py``); the rest run without a network.
"""

from tests.integration.conftest import (  # noqa: F401  (fixtures)
    fault_server,
    isolated,
    postgres_url,
    services,
    sinks,
)
