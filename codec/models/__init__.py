"""Analysis/synthesis transforms of each model family."""
