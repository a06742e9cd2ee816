"""Run parameters small enough for the tests: digits, ResNet-8, two epochs on the CPU."""


def quick(**overrides) -> dict:
    params = dict(dataset="digits", imb_type="exp", ratio=10.0, arch="resnet8", epochs=2, batch_size=128,
                  quiet=True, eval_batch_size=512)
    return {**params, **overrides}
