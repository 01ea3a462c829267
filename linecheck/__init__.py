"""The top layer: the ``linecheck`` command line (``cli``), the embedded servers
(``embedded``), child-process supervision (``processes``: start, watch, restart with
backoff), the end-to-end demo (``demo``), the chaos run (``chaos``, ``chaos_invariants``)
and the operator-side queries of the review queue (``review_queue``). Everything else is
imported from here; nothing imports it."""
