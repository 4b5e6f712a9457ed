import sys

from scav.demo.cli import main

sys.exit(main())
