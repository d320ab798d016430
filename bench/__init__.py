"""The Attention Zoo harness: `python -m bench` sweeps registered implementations into tidy results."""
