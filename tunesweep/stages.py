"""The pipeline's stages, in order: the one list that `tunesweep run`, its --from / --only flags and
hyperparameter_experiments.sh (through `tunesweep stages`) all read."""

STAGES = ("split", "finetune", "generate", "clean", "judge", "score", "report")
