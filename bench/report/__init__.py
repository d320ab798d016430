"""`python -m bench.report`: figures, fits and tables from a sweep's rows; never imports torch, never re-runs a cell."""
