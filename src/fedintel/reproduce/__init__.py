"""One-command reproductions of the paper's simulation results (``fedintel reproduce paper``)."""
