"""How a job meets nodes lost and added: spotray's scaling policies (a fresh cluster view,
growth that pays, the on-demand fallback) and the checkpoint interval."""
