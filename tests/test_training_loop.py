"""Training runs resume bit-exactly after SIGTERM, from orbax checkpoints, with a clean metrics log."""

import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tiny_models import tiny_config

from dspark_jax.drafter_kinds import new_drafter
from dspark_jax.models.params import init_params
from dspark_jax.train.drafter_step import TrainConfig, make_optimizer
from dspark_jax.train.loop import RunConfig, online_steps, run_training

CONFIG = tiny_config("llama")
PARAMS = init_params(CONFIG, jax.random.key(0), std=0.3)
TOKENS = jax.random.randint(jax.random.key(1), (16, 20), 1, CONFIG.vocab_size)
LOSS_MASK = jnp.broadcast_to(jnp.arange(20) >= 4, TOKENS.shape)
TRAIN = TrainConfig(learning_rate=1e-3, warmup_steps=2, total_steps=8, anchors_per_sequence=4)
RUN = RunConfig(checkpoint_every=3, progress=False)


def fresh(seed):
    model = new_drafter("dspark", CONFIG, seed=seed, depth=3, num_features=2, intermediate_size=64, markov_rank=8)
    return model, make_optimizer(model, TRAIN)


def train(directory, seed=0, after_step=None):
    model, optimizer = fresh(seed)
    steps = online_steps(model, optimizer, CONFIG, PARAMS, TOKENS, LOSS_MASK, 4, TRAIN)
    step = run_training(model, optimizer, steps, TRAIN, RUN, directory, after_step)
    return step, model


def test_resume_after_sigterm_is_bit_exact(tmp_path):
    _, straight = train(tmp_path / "straight")

    def kill_at_five(step, metrics):
        if step == 5:
            os.kill(os.getpid(), signal.SIGTERM)

    stopped, _ = train(tmp_path / "resumed", after_step=kill_at_five)
    assert stopped == 5
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()) == ["3", "5"]
    finished, resumed = train(tmp_path / "resumed", seed=123)  # different init: the checkpoint must win
    assert finished == TRAIN.total_steps
    for a, b in zip(jax.tree.leaves(nnx.state(straight)), jax.tree.leaves(nnx.state(resumed))):
        np.testing.assert_array_equal(a, b)
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, TRAIN.total_steps + 1))


def test_half_written_checkpoint_is_ignored(tmp_path):
    train(tmp_path)
    # A kill during a save leaves orbax's temporary directory behind; the newest complete step still loads.
    (tmp_path / "checkpoints" / "9.orbax-checkpoint-tmp-1").mkdir()
    step, _ = train(tmp_path)
    assert step == TRAIN.total_steps
