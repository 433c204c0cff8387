import sys

from aidi_trainer.cli import main

sys.exit(main())
