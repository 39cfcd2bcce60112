/* ppaia dashboard: renders one View (see ppaia/dashboard/views.py) into the page's elements, found by
   id in `root` (a document). Used by the live page (live.js); a static report can embed a view and call
   it the same way. */
(function (ppaia) {
  "use strict";

  function create(root) {
    const $ = (id) => root.getElementById(id);
    const page = { root, $, selected: null };
    const select = (peer) => {
      page.selected = peer;
      ppaia.table.select(page.table, peer);
      ppaia.graph.select(page.graph, peer);
    };
    page.table = ppaia.table.create($("table"), select);
    page.graph = ppaia.graph.create($("graph"), select);
    page.curves = ppaia.curves.create($("curves"));
    return page;
  }

  function list(node, items) {
    node.replaceChildren(...items.map((text) => ppaia.dom.el("li", { text })));
  }

  /** Render `view`; returns the milliseconds it took. */
  function render(page, view) {
    const started = performance.now();
    const { $ } = page;
    const dom = ppaia.dom;
    // first: the charts read their container's width, which after any other change forces a layout
    ppaia.curves.update(page.curves, view.curves, view.round);
    dom.setText($("title"), view.title || "ppaia dashboard");
    dom.setText($("kind"), view.kind + (view.live ? " · live" : ""));
    dom.setText($("status"), view.status);
    $("status").dataset.dropAfter = view.drop_after === null || view.drop_after === undefined ? "" : String(view.drop_after);
    const counter = $("round-counter");
    dom.setText(counter, `round ${view.round} of ${view.rounds}` + (view.round !== view.latest ? ` (newest ${view.latest})` : ""));
    counter.dataset.round = String(view.round);
    counter.dataset.latest = String(view.latest);
    const count = $("peer-count");
    dom.setText(count, `${view.peers_total.toLocaleString("en")} peers`);
    count.dataset.peers = String(view.peers_total);
    list($("notes"), view.notes);
    list($("problems"), view.problems);
    ppaia.table.update(page.table, view.peers);
    ppaia.graph.update(page.graph, view.graph, view.peers);
    const caption = view.graph
      ? `${view.graph.nodes.length.toLocaleString("en")} of ${view.graph.total_nodes.toLocaleString("en")} peers drawn; ` +
        `links: ${view.graph.edge_kind}` + (view.graph.weights ? " (width: weight)" : "")
      : "no topology known";
    dom.setText($("graph-caption"), caption);
    ppaia.states.legend($("legend"), view.peers.state);
    dom.setText($("heat-title"), view.heat ? `Heat-map: ${view.heat.name}` : "Trust");
    ppaia.heatmap.draw($("heat"), view.heat, $("heat-caption"));
    ppaia.ledger.update($("ledger"), view.ledger);
    dom.setText($("config"), view.config || "");
    return performance.now() - started;
  }

  ppaia.page = { create, render };
})(window.ppaia = window.ppaia || {});
