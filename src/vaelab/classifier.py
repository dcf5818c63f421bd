"""``python -m vaelab.classifier``: the same as ``vaelab-classifier`` (``vaelab.cli.classifier``)."""

if __name__ == "__main__":
    from vaelab.cli.classifier import main

    main()
