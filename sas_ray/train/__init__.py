"""SimCLR training (core loop), evaluation (linear probe, kNN) and the Ray Train layer."""
