"""Unlearning on opt-out: remove one client's influence from a run (``fedintel forget``).

:mod:`.forget` holds the exact (retrain from before the client's first round) and approximate (subtract its
stored updates, then recover) methods; :mod:`.cluster_replay` retrains only the client's cluster of a clustered
run; :mod:`.cli` is the command. These workflows sit above :mod:`fedintel.experiment`.
"""
