"""A live web page of a run: a simulated run's folder (live or finished, with a round slider) or real
peers followed through their signed statuses (``ppaia dashboard``, ``ppaia run --dashboard``, ``ppaia
launch --dashboard``). The simulator and the peers know nothing of it: it reads what they publish.

- :mod:`ppaia.dashboard.sources`: where the data comes from, kept as data;
- :mod:`ppaia.dashboard.views`: what the page receives (bounded at any number of peers);
- :mod:`ppaia.dashboard.server`: Starlette + uvicorn, server-sent events, safety headers;
- ``static/``: the page — plain scripts, one file per part (``js/curves.js``, ``graph.js``,
  ``table.js``, ``heatmap.js``, ...), and the vendored uPlot and cytoscape (``static/vendor``, pinned
  npm releases, checked against ``vendor.json``).
"""

from ppaia.dashboard.server import DEFAULT_PORT, Dashboard, DashboardError
from ppaia.dashboard.sources import RunSource, Source, SwarmSource
from ppaia.dashboard.views import View

__all__ = ["DEFAULT_PORT", "Dashboard", "DashboardError", "RunSource", "Source", "SwarmSource", "View"]
