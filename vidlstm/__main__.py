import sys

from vidlstm.cli import main

sys.exit(main())
