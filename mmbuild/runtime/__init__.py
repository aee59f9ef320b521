"""Running built models: Model, Engine, Context, IRTTensor (:mod:`.engine`), the model file
(:mod:`.model_file`, :mod:`.manifest`) and what a model reports about itself (:mod:`.inspect`)."""
