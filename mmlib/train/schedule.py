"""When things happen in a run: the learning rate of each epoch, and the epochs that end with an evaluation or a
checkpoint."""

from mmlib.config import RunConfig


def learning_rate(config: RunConfig, epoch: int) -> float:
    """The learning rate of 0-based ``epoch``: linear warm-up, then x lr_decay at each milestone (a resolved config,
    as the trainer holds it: RunConfig.resolve)."""
    if config.warmup_epochs is None or config.lr_milestones is None:
        raise ValueError("learning_rate needs a resolved configuration: RunConfig.resolve()")
    if epoch < config.warmup_epochs:
        return config.lr * (epoch + 1) / config.warmup_epochs
    return config.lr * config.lr_decay ** sum(epoch >= m for m in config.lr_milestones)


def due(epoch: int, every: int, epochs: int) -> bool:
    """Whether 0-based ``epoch`` ends with an evaluation or checkpoint done every ``every`` epochs and after the
    last."""
    return (epoch + 1) % every == 0 or epoch + 1 == epochs
