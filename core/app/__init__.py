"""The application: the ``rcdm`` command line, the typed config and its profiles, the pipeline.

    cli.py        click commands: parse, print the resolved config, call one stage entry point
    config.py     the frozen dataclasses of pipeline.yaml (the paper's recipe by default)
    pipeline.py   ``rcdm run``: the stages in order, skipping finished ones
    profiles/     named configs shipped with the package (``demo``)
    readme.py     README sections generated from the code

Nothing here imports torch at module level: ``rcdm --help`` and ``--dry-run`` stay fast.
"""
