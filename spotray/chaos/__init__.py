"""`spotray chaos`: a local multi-node Ray cluster whose nodes get real notices (from a
loopback metadata service) and real kills, and the report of what each cost."""
