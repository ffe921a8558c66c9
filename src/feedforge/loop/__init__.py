"""The service in the loop: simulated users against it (over HTTP or in process), and
off-policy replays of target policies through its own pipeline."""
