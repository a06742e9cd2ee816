"""Training a run: the losses and networks, the training step, the schedule, what a run measures, its folder and
checkpoints, and the trainer that trains one run or several fused into one model (mmlib.train.trainer)."""
