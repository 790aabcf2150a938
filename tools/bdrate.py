"""BD-rate of one RD curve against another: `python tools/bdrate.py REFERENCE.json TEST.json`."""
from codec.bdrate import main

if __name__ == "__main__":
    main()
