"""What feeds linecheck from outside: the publisher a line test machine calls (idempotent
producer, claim check), the line simulator that drives it from ``board_data``, and the
publisher of review outcomes an operator station or the MES sends."""
