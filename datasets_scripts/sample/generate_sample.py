#!/usr/bin/env python
"""Front end of :mod:`modeling_mel.builders.sample` (installed with the package): ``--help`` lists the options.

Same as ``python -m modeling_mel.builders.sample``; library use: ``from modeling_mel.builders import sample``.
"""

import sys

from modeling_mel.builders.sample import *  # noqa: F401,F403
from modeling_mel.builders.sample import main

if __name__ == "__main__":
    sys.exit(main())
