"""The MONAI bundle: where it comes from, how it is run, its logs, labels and the tiny reference bundle."""
