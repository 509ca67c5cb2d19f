"""The prepared GPU script runs end to end with tiny shapes on CPU (8 virtual devices, kernels in the
Pallas interpreter), so the one rare run on a GPU meets working code."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import gpu_check  # noqa: E402


def test_the_gpu_check_runs_with_tiny_shapes(capsys):
    rows = gpu_check.main(["--tiny", "--repeats", "1"])
    out = capsys.readouterr().out
    kernels = [row for row in rows if row[0].startswith("attention")]
    steps = [row for row in rows if row[0].startswith("step")]
    assert [row[0] for row in kernels] == ["attention decode B=1 T=1 S=256", "attention verify B=1 T=8 S=256"]
    for row in kernels:  # the kernels agree with the float32 reference to bfloat16 precision
        assert "failed" not in row[2] and float(row[3].split("err ")[1]) < 2e-2, row
    assert len(steps) == 2 and all("8 device(s)" in row[0] and "spec/decode" in row[3] for row in steps)
    assert out.count("| attention") == 2 and out.count("| step") == 2
