"""Tasks that train a tiny model with an entry as its attention and score it: MQAR recall (`modes=recall`)."""
