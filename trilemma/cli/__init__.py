"""The ``trilemma`` command line. Entry point: :func:`trilemma.cli.main.main`."""
