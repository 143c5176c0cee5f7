"""Review of predictions: per-case/per-class metrics and the side-by-side pictures."""
