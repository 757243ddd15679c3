"""Clusters: `up`/`down` on AWS (Ray's launcher, after checks) and on this machine, with the
cost ledger kept; `status`; the Ray token and the instance profiles the nodes run under."""
