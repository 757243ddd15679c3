"""The driver side of a run: checks before Ray, Ray Train's trainer, live progress, metrics,
the run lock, and submission as a Ray Job."""
