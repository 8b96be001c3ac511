"""Train and test one model, or sweep many (conf/config.yaml): see README.md. The command is
celeba_gender/train.py's."""

# isort: off
import celeba_gender.quiet_interrupt  # noqa: F401  (first: a Ctrl-C while importing is quiet)

# isort: on
from celeba_gender.train import main

if __name__ == "__main__":
    main()
