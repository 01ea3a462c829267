"""The top layer: the ``linecheck`` command line (``cli``), the embedded servers
(``embedded``), child-process supervision (``processes``) and the end-to-end demo
(``demo``). Everything else is imported from here, nothing imports it."""
