"""Discovery: seeds, probes and rules (``engine``, ``registry``, ``state``, ``fx``, ``rules/``), solved into gauges
(``solve``, ``families``)."""
from gaugec.discover.discovery import Discovery, discover  # noqa: F401
from gaugec.discover.solve import Refusal  # noqa: F401
