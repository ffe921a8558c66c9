"""The closed loop: simulated users against the service (over HTTP or in process)."""
