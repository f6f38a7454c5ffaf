"""The soak: hours at a steady load through the real daemon (``python -m bench.soak``)."""
