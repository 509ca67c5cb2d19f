"""Two processes joined by `jax.distributed` on loopback (4 CPU devices each, gloo collectives) train a
drafter on a 2x4 mesh as one process with 8 devices does, and resume exactly after one of them is killed."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY
from safetensors.numpy import load_file

from dspark_jax import cli

WORKER = str(Path(__file__).parent / "multiprocess_worker.py")
TIMEOUT_S = 120  # a hung collective fails the test instead of the suite




def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture
def started():
    """Every worker process a test starts; none outlives it, whatever fails."""
    processes: list[subprocess.Popen] = []
    yield processes
    for process in processes:
        process.kill()
        process.wait()


def _job(started: list, command: list[str], die_at: int = 0) -> list[subprocess.Popen]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {
        "JAX_PLATFORMS": "cpu", "JAX_COORDINATOR_ADDRESS": f"localhost:{port}", "JAX_NUM_PROCESSES": "2"}
    processes = [subprocess.Popen([sys.executable, WORKER, *command], env=env | {
        "JAX_PROCESS_ID": str(i), "DIE_AT_STEP": str(die_at if i == 1 else 0)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    started += processes
    return processes


def _finish(process: subprocess.Popen) -> tuple[int, str]:
    out, _ = process.communicate(timeout=TIMEOUT_S)
    return process.returncode, out


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.multiprocess
def test_two_processes_train_as_one_and_resume_after_one_is_killed(data, tmp_path, started):
    train = ["train", "--drafter", "dspark", "--target", TINY, "--data", str(data), "--length", "96",
             "--num-features", "2", "--steps", "4", "--batch-size", "4", "--block-size", "3", "--anchors", "3",
             "--rank", "8", "--checkpoint-every", "2", "--mesh", "2x4"]
    cli.main([*train, "--out", str(tmp_path / "one")])  # one process, this suite's 8 devices

    two = [*train, "--distributed", "--out", str(tmp_path / "two")]
    first = _job(started, two, die_at=3)  # process 1 dies after step 3; step 2's checkpoint is on disk
    code, out = _finish(first[1])
    assert code == 9, out
    first[0].kill()  # its peer is gone: a scheduler stops the job
    _finish(first[0])
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir() if p.name.isdigit()) == ["2"]

    second = _job(started, two)  # the same command again resumes from step 2
    outputs = []
    for process in second:
        code, out = _finish(process)
        assert code == 0, out
        outputs.append(out)
    assert " 2/4 " in outputs[0] and " 0/4 " not in outputs[0]  # process 0's bar: it started at step 2
    np.testing.assert_allclose(_losses(tmp_path / "two"), _losses(tmp_path / "one"), rtol=1e-5)
    ours, reference = (load_file(tmp_path / run / "drafter" / "drafter.safetensors") for run in ("two", "one"))
    assert ours.keys() == reference.keys()
    for name in reference:
        np.testing.assert_allclose(ours[name], reference[name], rtol=1e-4, atol=1e-6, err_msg=name)
