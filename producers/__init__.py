"""What feeds linecheck from outside: the publisher a line test machine calls (idempotent
producer, claim check), the line simulator that drives it from ``board_data``, the publisher
of review outcomes an operator station or the MES sends, and a hostile line (``hostile``:
malformed and malicious events for chaos runs and tests)."""
