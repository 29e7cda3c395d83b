"""Test doubles for users' own tests: run your agents and pipelines against them, not against mocks.

- :mod:`agents.testing.fault_server` — an OpenAI-compatible HTTP server that injects the failures a
  real provider produces (latency, 429, 500, hangs, resets, invalid JSON, refusals, truncation, …)
  on cue. Point ``OPENAI_BASE_URL`` (or :class:`agents.llm.LLMConfig`'s ``base_url``) at it::

      from agents.testing.fault_server import FaultServer, fault_marker

      with FaultServer(latency_ms=20) as server:
          ...  # give server.base_url to the client; fault_marker("429", "ok") in a message
                 # makes that event's first call fail with a 429 and its retry succeed

  or run it as a process: ``python -m agents.testing.fault_server --port 8099``.

- :mod:`agents.testing.fake_agent` — :class:`~agents.testing.fake_agent.FakeAgent`, an agent
  with given answers, confidence, latency and failures, for tests of flows and routing without
  any model.

Nothing in Sluice's runtime imports this package; it needs ``aiohttp``, a dependency of Sluice.
"""
