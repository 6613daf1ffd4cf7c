import sys

if __name__ == "__main__":
    from . import collector

    collector.pause()  # until the work loop starts: the imports and the model set-up make ~800 000 objects
    from .cli import main

    sys.exit(main())
