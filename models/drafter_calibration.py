"""The STS fits of an exported drafter, stored beside its weights (`sts.json`).

One fit per decoding temperature it was calibrated at (`dspark-jax calibrate`), with a fingerprint of the
weights file, so a retrained drafter never inherits the fits of the weights it replaced.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from dspark_jax.atomic_file import write_atomically
from dspark_jax.models.drafter_checkpoint import WEIGHTS
from dspark_jax.temperature_scaling import SequentialTemperatures

CALIBRATION_FILE = "sts.json"


def weights_fingerprint(directory: Path) -> str:
    return hashlib.sha256((Path(directory) / WEIGHTS).read_bytes()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class DrafterCalibration:
    """The STS fits of one exported drafter, one per decoding temperature it was calibrated at."""

    fits: tuple[tuple[float, SequentialTemperatures], ...]  # (decoding temperature, fit), sorted

    def for_temperature(self, temperature: float) -> SequentialTemperatures | None:
        return dict(self.fits).get(float(temperature))

    def with_fit(self, temperature: float, fit: SequentialTemperatures) -> DrafterCalibration:
        return DrafterCalibration(tuple(sorted((dict(self.fits) | {float(temperature): fit}).items())))

    @staticmethod
    def read(directory: Path) -> DrafterCalibration:
        """The drafter's fits; none when it was never calibrated, or when its weights changed since (a fit
        belongs to the weights it was measured on)."""
        path = Path(directory) / CALIBRATION_FILE
        if not path.is_file():
            return DrafterCalibration(())
        stored = json.loads(path.read_text())
        if stored.get("weights") != weights_fingerprint(directory):
            return DrafterCalibration(())
        return DrafterCalibration(tuple(sorted((float(t), SequentialTemperatures(tuple(fit)))
                                               for t, fit in stored["temperatures"].items())))

    def write(self, directory: Path) -> None:
        stored = {"weights": weights_fingerprint(directory),
                  "temperatures": {f"{t:g}": list(fit.temperatures) for t, fit in self.fits}}
        text = json.dumps(stored, indent=2)
        write_atomically(Path(directory) / CALIBRATION_FILE, lambda tmp: Path(tmp).write_text(text))
