import sys

from .writer import main

sys.exit(main())
