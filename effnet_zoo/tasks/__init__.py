"""What users run: predict, validate, fine-tune, export (the ``effnet-zoo`` subcommands' implementations)."""
