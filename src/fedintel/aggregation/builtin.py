"""The ``aggregation:`` section with the built-in rules registered: import from here to parse or build one.

Importing a rule module registers it; this module imports every built-in rule and re-exports the registry's
functions, so ``aggregation.rule`` accepts them all (a rule defined elsewhere registers when its module is
imported). Parsing an experiment file imports this module, so the built-in rule modules (and
:mod:`~fedintel.aggregation.validate`) import torch inside the functions that compute, never at module level:
``fedintel validate`` and every ``--help`` stay torch-free (``tests/test_cli_light.py``).
"""

from fedintel.aggregation import fedavg, krum, median, norm_bound, ota, trimmed_mean  # noqa: F401
from fedintel.aggregation.config import (
    AggregationConfig,
    build_rule,
    get_aggregator,
    parse_aggregation_config,
    register_aggregator,
    registered,
)

__all__ = ["AggregationConfig", "build_rule", "get_aggregator", "parse_aggregation_config", "register_aggregator",
           "registered"]
