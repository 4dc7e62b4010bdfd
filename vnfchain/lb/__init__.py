"""Load-balancer helpers that run in Python: the Maglev lookup table."""
