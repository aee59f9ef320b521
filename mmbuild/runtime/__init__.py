"""The runtime: the model file format, and (added with the plan) Model, Engine and Context."""
