"""`python -m bench`: a config expanded into cells, each measured in a worker process, one row per cell."""
