from dspark_jax.cli import main

main()
