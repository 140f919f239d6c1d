import sys

from .sections import main

sys.exit(main())
