import sys

from minilm.cli import main

sys.exit(main())
