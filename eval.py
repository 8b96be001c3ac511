"""Test a checkpoint (conf/eval.yaml): see README.md. The command is celeba_gender/eval.py's."""

from celeba_gender.quiet_interrupt import quiet_imports

with quiet_imports(__name__):  # a Ctrl-C while these import (seconds) ends the command at once
    from celeba_gender.eval import main

if __name__ == "__main__":
    main()
