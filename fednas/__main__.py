import sys

from fednas.cli import main

sys.exit(main())
