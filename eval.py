"""Test a checkpoint (conf/eval.yaml): see README.md. The command is celeba_gender/eval.py's."""

# isort: off
import celeba_gender.quiet_interrupt  # noqa: F401  (first: a Ctrl-C while importing is quiet)

# isort: on
from celeba_gender.eval import main

if __name__ == "__main__":
    main()
