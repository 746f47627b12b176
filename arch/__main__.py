import sys

from arch.cli import main

sys.exit(main())
