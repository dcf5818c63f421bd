"""``python -m vaelab.sample``: the same as ``vaelab-sample`` (``vaelab.cli.sample``)."""

if __name__ == "__main__":
    from vaelab.cli.sample import main

    main()
