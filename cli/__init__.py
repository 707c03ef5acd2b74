"""The ``moesim`` command line. ``main.py`` builds the app; each ``*_cmd.py`` module registers its commands."""
