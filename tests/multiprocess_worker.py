"""One process of the two-process training test (test_multiprocess_training.py): 4 CPU devices, the job
found from the environment (`--distributed`), the CLI's own train command; with DIE_AT_STEP it exits at
that step without a word, as a process does when its machine is lost."""

import os
import sys

import jax

jax.config.update("jax_num_cpu_devices", 4)

from dspark_jax import cli, train_commands  # noqa: E402  (after the device count)

die_at = int(os.environ.get("DIE_AT_STEP", "0"))
if die_at:
    run_training = train_commands.run_training

    def run_and_die(*args, **kwargs):
        def after_step(step, metrics):
            if step == die_at:
                os._exit(9)
        return run_training(*args, after_step=after_step, **kwargs)

    train_commands.run_training = run_and_die

cli.main(sys.argv[1:])
