"""``python -m vaelab.compare``: the same as ``vaelab-compare`` (``vaelab.cli.compare``)."""

if __name__ == "__main__":
    from vaelab.cli.compare import main

    main()
