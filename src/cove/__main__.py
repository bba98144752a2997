import sys

from cove.cli import main

sys.exit(main())
