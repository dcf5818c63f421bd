"""``python -m vaelab.evaluate``: the same as ``vaelab-eval`` (``vaelab.cli.evaluate``). Run it, do not
import it: ``vaelab.evaluate`` is the API's function (``vaelab.api.evaluate``) until this module is imported."""

if __name__ == "__main__":
    from vaelab.cli.evaluate import main

    main()
