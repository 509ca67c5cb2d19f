"""Drafter training for DSpark, DFlash and EAGLE-3: data, target features, blocks, losses, steps, the run."""
