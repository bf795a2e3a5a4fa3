"""Budget search (this package; the public entry point is `golfpack.search`):
the per-tensor layout (spec per tensor + artifact codec) with the least predicted
loss whose exact artifact size plus code bytes fits the budget, with the least headroom we can reach.

Pipeline (each phase has a progress bar and, with a cache dir, is skipped when already measured), one
module per phase: config.py (SearchConfig), problem.py (1), costs.py (2, 3), measure.py (4, on top of the
measuring in sensitivity.py), fit.py (5, on top of the knapsack in solver.py), select.py (6), run.py (all
of them: run_search -> SearchResult); report.py draws the frontier of a finished search.

1. candidates: every tensor gets a few specs (`sensitivity.candidate_specs`), each quantized ONCE
   into the TensorRecord pack would store; the same records feed costs, sensitivity and the packs.
2. floor: the cheapest candidate of every tensor, packed exactly; a budget below it fails here,
   before any model measurement.
3. cost table: bytes of each (tensor, spec), measured by encoding that record alone as a QGv3
   artifact (same writer, the first codec). Grouped compression is not additive, so every layout the
   search packs exactly feeds an affine map `artifact = a * sum(costs) + b` (per codec); the solver
   sees the budget through that map.
4. sensitivity: delta loss per (tensor, spec) on calibration tokens (direct forward, or the Taylor
   proxy); the solver minimises their sum.
5. solve + fit: multiple-choice knapsack, exact pack of the answer, then move the solver's budget
   (secant steps, bisection once bracketed) until the exact artifact fits with < target headroom;
   finally spend what is left on upgrades, each batch checked by an exact pack.
6. select: the solver's answer, the greedy and proxy answers and every preset that fits are scored
   JOINTLY (all tensors quantized at once) on held-out calibration tokens; the lowest damage wins.
"""

from golfpack.budget.config import SearchConfig
from golfpack.budget.problem import write_policy
from golfpack.budget.run import SearchResult, run_search
from golfpack.budget.solver import InfeasibleBudget

__all__ = ["InfeasibleBudget", "SearchConfig", "SearchResult", "run_search", "write_policy"]
