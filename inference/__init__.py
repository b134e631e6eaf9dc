"""The serving library: resolve a model ref, load and cache it, run predictors off the event loop."""
