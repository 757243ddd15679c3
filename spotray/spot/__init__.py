"""AWS spot: the instance metadata client, the watcher that turns notices into Ray drains,
and the simulator that replays spot traces against a job."""
