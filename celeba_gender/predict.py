"""``celeba-gender-predict`` (or ``python -m celeba_gender.predict``): the repository's
predict.py for an installed package, with the configs the package carries. Same arguments."""

# isort: off
import celeba_gender.quiet_interrupt  # noqa: F401  (first: a Ctrl-C while importing is quiet)

# isort: on
import hydra
from omegaconf import DictConfig

from celeba_gender.config import CONFIG_DIR  # also registers the resolvers the configs use
from celeba_gender.inference.run import run_prediction


@hydra.main(config_path=str(CONFIG_DIR), config_name="predict", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_prediction(cfg)


if __name__ == "__main__":
    main()
