#!/usr/bin/env python
"""Front end of :mod:`modeling_mel.builders.zemeld_sample` (installed with the package): ``--help`` lists the options.

Same as ``python -m modeling_mel.builders.zemeld_sample``; library use: ``from modeling_mel.builders import zemeld_sample``.
"""

import sys

from modeling_mel.builders.zemeld_sample import *  # noqa: F401,F403
from modeling_mel.builders.zemeld_sample import main

if __name__ == "__main__":
    sys.exit(main())
