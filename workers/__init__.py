"""The online workers, Kafka consumer groups built on FastStream:

- the inspection worker (``inspection_app``: the thin FastStream handler; ``inspector``: the
  per-event logic, decode → ROI → classify → verdict → explanation or dead letter;
  ``audit_sink``: the PostgreSQL audit row and the Redis counters; ``metrics``: Prometheus);
- the review sink (``review_sink``: joins review outcomes with verdicts, watches drift;
  ``review_store``: its tables; ``drift``: the drift monitor);
- shared by both: ``messages`` (worker names, dead letters) and ``delivery`` (offsets
  stored only after a batch's sinks succeeded, backoff after failures).

Workers import ``inspection``, ``infra`` and ``schemas``, never ``training``.
"""
