"""What the sweep and the regression check share about a cell: the cell, its timed calls, its peak memory, locks."""
