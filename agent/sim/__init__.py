"""`pollen simulate`: the swarm at any size on the real scheduling code (see `engine`)."""
