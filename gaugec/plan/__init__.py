"""The gauge plan: proven gauges as data (``gauge``), their group actions (``action``), the plan bound to a model
(``plan``), the graph runner that reads absorbed translations (``runner``) and the canonical-section executor the
DDC optimizers run (``executor``)."""
from gaugec.plan.action import apply_mult_leg, conj_gain, groups_of_entries, shift_from_vector, shift_weight  # noqa: F401
from gaugec.plan.gauge import Gauge, Leg, PlanMismatchError, slice_part  # noqa: F401
