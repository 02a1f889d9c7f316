"""``python -m jaxcnn.cli``: the same as the ``jaxcnn`` console script."""

import sys

from jaxcnn.cli import main

sys.exit(main())
