"""``make demo``: the main job, end to end on real data.

Trains the MLP 784-256-256-10 on Fashion-MNIST with SGD for 5 epochs (a stored run, exactly what
``flatminima train --data fashion-mnist --model mlp:256,256 --optimizer sgd --epochs 5`` does) and
prints its test error.
"""

from __future__ import annotations

import sys

from .errors import FlatminimaError
from .experiment import TrainConfig, train_run
from .store import Store


def main() -> int:
    store = Store()
    cfg = TrainConfig(data="fashion-mnist", model="mlp:256,256", optimizer="sgd", lr=0.05, momentum=0.9,
                      epochs=5, batch_size=128, scheduler="cosine", seed=0)
    print("flatminima demo: MLP 784-256-256-10, SGD (lr 0.05, momentum 0.9, cosine), 5 epochs on Fashion-MNIST")
    try:
        run, result = train_run(cfg, store, name="demo")
    except FlatminimaError as exc:
        print(f"flatminima: error: {exc}", file=sys.stderr)
        return 2
    for row in result.history:
        print(f"  epoch {row['epoch']:.0f}: train loss {row['train_loss']:.4f}, test error {row['test_error']:.4f}")
    print(f"test error: {result.final['test_error']:.4f} ({result.seconds:.1f} s); run {run.id} stored in {run.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
