"""Drafter training for DSpark, DFlash and EAGLE-3 (not yet implemented; see the drafters issue)."""
