"""The ``aggregation:`` section with the built-in rules registered: import from here to parse or build one.

Importing a rule module registers it; this module imports every built-in rule and re-exports the registry's
functions, so ``aggregation.rule`` accepts them all (a rule defined elsewhere registers when its module is
imported).
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
