"""The ``cocomix`` command line (installed as ``cocomix_mlx.cli``)."""
