"""Train and test one model, or sweep many (conf/config.yaml): see README.md. The command is
celeba_gender/train.py's."""

from celeba_gender.quiet_interrupt import quiet_imports

with quiet_imports(__name__):  # a Ctrl-C while these import (seconds) ends the command at once
    from celeba_gender.train import main

if __name__ == "__main__":
    main()
