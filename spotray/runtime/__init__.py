"""The worker runtime: the loop Ray Train runs on every rank for any workload, its
checkpoints (format, tensors, storage), the preemption plan, the data order, resume, and
the typed messages the loop sends to the driver and the controller."""
