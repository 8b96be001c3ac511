"""Label the faces of photos and videos (conf/predict.yaml): see README.md. The command is
celeba_gender/predict.py's."""

# isort: off
import celeba_gender.quiet_interrupt  # noqa: F401  (first: a Ctrl-C while importing is quiet)

# isort: on
from celeba_gender.predict import main

if __name__ == "__main__":
    main()
