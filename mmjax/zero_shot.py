"""``python -m mmjax.zero_shot``: the zero-shot command under its documented name; it is
``mmjax.commands.zero_shot`` (image preprocessing: ``mmjax.interop.preprocess``)."""

if __name__ == "__main__":
    import sys

    from mmjax.commands.zero_shot import main

    sys.exit(main())
