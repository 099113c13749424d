"""``python -m dermogaze``: the ``dermogaze`` command (:func:`dermogaze.cli.main`)."""

import sys

from .cli import main

sys.exit(main())
