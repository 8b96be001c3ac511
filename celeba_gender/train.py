"""``celeba-gender-train`` (or ``python -m celeba_gender.train``): the repository's train.py for
an installed package, with the configs the package carries. Same arguments as train.py."""

# isort: off
import celeba_gender.quiet_interrupt  # noqa: F401  (first: a Ctrl-C while importing is quiet)

# isort: on
import hydra
from omegaconf import DictConfig

from celeba_gender.config import CONFIG_DIR  # also registers the resolvers the configs use
from celeba_gender.training.run import run_training


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    return run_training(cfg)


if __name__ == "__main__":
    main()
