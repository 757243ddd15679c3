"""How a job meets nodes lost and added: spotray's scaling policies (a fresh cluster view,
growth that pays, the on-demand fallback), the checkpoint interval, and the registry that
names them beside Ray Train alone."""
