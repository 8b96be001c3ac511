"""``celeba-gender-eval`` (or ``python -m celeba_gender.eval``): the repository's eval.py for an
installed package, with the configs the package carries. Same arguments as eval.py."""

# isort: off
import celeba_gender.quiet_interrupt  # noqa: F401  (first: a Ctrl-C while importing is quiet)

# isort: on
import hydra
from omegaconf import DictConfig

from celeba_gender.config import CONFIG_DIR  # also registers the resolvers the configs use
from celeba_gender.training.run import run_evaluation


@hydra.main(config_path=str(CONFIG_DIR), config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    return run_evaluation(cfg)


if __name__ == "__main__":
    main()
