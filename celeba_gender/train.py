"""``celeba-gender-train`` (or ``python -m celeba_gender.train``): train and test one model, or
sweep many (conf/config.yaml), with the configs the package carries (a clone's conf/); the
repository's train.py runs this. Start-up (startup.start_command: the configs' resolvers)
happens here, when the command starts, not when a module is imported."""

from celeba_gender.quiet_interrupt import quiet_imports

with quiet_imports(__name__):  # a Ctrl-C while these import (seconds) ends the command at once
    import hydra
    from omegaconf import DictConfig

    from celeba_gender.config import CONFIG_DIR
    from celeba_gender.startup import start_command
    from celeba_gender.training.run import run_training


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
def _command(cfg: DictConfig) -> float | None:
    return run_training(cfg)


def main() -> float | None:
    start_command()
    return _command()


if __name__ == "__main__":
    main()
