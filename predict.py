"""Label photos: python predict.py ckpt_path=PATH input=PHOTO_FOLDER_OR_GLOB [detect=false]."""

# isort: off
import celeba_gender.quiet_interrupt  # noqa: F401  (first: a Ctrl-C while importing is quiet)

# isort: on
import hydra
from omegaconf import DictConfig

import celeba_gender.config  # noqa: F401  (registers the resolvers the configs use)
from celeba_gender.inference.run import run_prediction


@hydra.main(config_path="conf", config_name="predict", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_prediction(cfg)


if __name__ == "__main__":
    main()
