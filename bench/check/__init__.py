"""`python -m bench.check`: the regression suite, the same-host A/B against a base commit, and the comparison."""
