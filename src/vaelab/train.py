"""``python -m vaelab.train``: the same as ``vaelab-train`` (``vaelab.cli.train``). Run it, do not
import it: ``vaelab.train`` is the API's function (``vaelab.api.train``) until this module is imported."""

if __name__ == "__main__":
    from vaelab.cli.train import main

    main()
