"""Train and test one model, or sweep many: see conf/config.yaml and README.md."""

# isort: off
import celeba_gender.quiet_interrupt  # noqa: F401  (first: a Ctrl-C while importing is quiet)

# isort: on
import hydra
from omegaconf import DictConfig

import celeba_gender.config  # noqa: F401  (registers the resolvers the configs use)
from celeba_gender.training.run import run_training


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    return run_training(cfg)


if __name__ == "__main__":
    main()
