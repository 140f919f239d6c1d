import sys

from ablations.bench.sections import main

sys.exit(main())
