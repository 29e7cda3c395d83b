"""The human half of the loop: review items, decisions, and the service reviewers use.

- :mod:`streams.review.state`: pending items and decisions, a projection of the ``<flow>.review``
  and ``<flow>.reviewed`` topics (rebuilt from them on every start: nothing lives only in memory);
- :mod:`streams.review.desk`: the operations (claim, release, approve, edit, reject), with claims
  in Redis so two reviewers cannot decide one item, and each decision written once to
  ``<flow>.reviewed`` as a ``ReviewDecision``;
- :mod:`streams.review.auth`: reviewers, their API tokens and password hashes;
- :mod:`streams.review.sessions`: web sessions in Redis;
- :mod:`streams.review.context`: what API and UI share (app keys, an item as shown, its source
  event, decision metrics);
- :mod:`streams.review.api`: the JSON API and ``sluice review serve``, which the CLI calls;
- :mod:`streams.review.web`: the server-rendered UI.
"""
