"""The worker runtime: the loop Ray Train runs on every rank for any workload, the data
order, resume, and the typed messages the loop sends to the driver and the controller."""
