"""Background jobs: a detached supervisor per run, its environment, and cancelling it."""
