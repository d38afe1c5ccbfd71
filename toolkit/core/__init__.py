"""Bottom layer: errors, atomic files, locks, the host probe, the bundle, contract, metrics."""
