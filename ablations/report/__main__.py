import sys

from ablations.report.writer import main

sys.exit(main())
