"""``python -m trio_conduit.testing._relay_process``: the impairment relay's process (see ``_relay``)."""

from ._relay import main

if __name__ == "__main__":
    main()
