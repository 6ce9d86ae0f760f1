"""The job engine: model, store, workers and the tasks they run."""
