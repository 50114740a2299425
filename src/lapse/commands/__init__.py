"""The ``lapse`` subcommands, one module per area; each has ``register(commands, common)``."""
