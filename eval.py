"""Test a trained checkpoint on any CelebA copy: python eval.py ckpt_path=PATH data.root=ROOT."""

# isort: off
import celeba_gender.quiet_interrupt  # noqa: F401  (first: a Ctrl-C while importing is quiet)

# isort: on
import hydra
from omegaconf import DictConfig

import celeba_gender.config  # noqa: F401  (registers the resolvers the configs use)
from celeba_gender.training.run import run_evaluation


@hydra.main(config_path="conf", config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    return run_evaluation(cfg)


if __name__ == "__main__":
    main()
